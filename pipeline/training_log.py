"""The run's bookkeeping that must survive resumes: cumulative CPU time, and a JSONL log of the training curve.

    python -m pipeline.training_log --log results/training_log.jsonl --plot results/training_curve.png
    python -m pipeline.training_log --log RUN/training_log.jsonl --add_eval results/nfe/ddpm-20_n2000.json --step 2373
    python -m pipeline.training_log --log results/training_log.jsonl --update_from RUN2/training_log.jsonl \
        --restart_step 5617 --restart_note "warm restart from the EMA weights of step 5,617 ..."

``--add_eval`` records a ``pipeline.evaluate`` result of the EMA weights saved at a checkpoint step as an FID record,
so that FID measured after training (larger N than in-loop FID) draws the same curve.

``--update_from`` brings the log up to date with a run's own log. A run warm-restarted from another run's saved
weights (``train_unet.py --init_from``) counts its steps from 0; ``--restart_step`` joins it to the log of the run it
continues, at the checkpoint whose weights it started from: later records of the first run are dropped, a restart
record is written, and the new run's steps, images and CPU/wall hours count on from that checkpoint. Later updates
re-join at the log's last restart record, so the command can be repeated as the new run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from .cli import ArgumentParser, run_cli


class TrainingClock:
    """CPU seconds and wall seconds of this process, cumulative over every resumed segment of a run."""

    def __init__(self, counted_from_step: int = 0):
        self.previous_cpu = self.previous_wall = 0.0
        self.counted_from_step = counted_from_step  # > 0 when resumed from a checkpoint that had no clock
        self._cpu_start, self._wall_start = time.process_time(), time.monotonic()

    def state_dict(self) -> dict:
        return {"cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds,
                "counted_from_step": self.counted_from_step}

    def load_state_dict(self, state: dict) -> None:
        self.previous_cpu, self.previous_wall = float(state["cpu_seconds"]), float(state["wall_seconds"])
        self.counted_from_step = int(state.get("counted_from_step", 0))
        self._cpu_start, self._wall_start = time.process_time(), time.monotonic()

    @property
    def cpu_seconds(self) -> float:
        return self.previous_cpu + time.process_time() - self._cpu_start

    @property
    def wall_seconds(self) -> float:
        return self.previous_wall + time.monotonic() - self._wall_start


class LossMeter:
    """Mean training loss since the last log record."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def add(self, value: float) -> None:
        self.total, self.count = self.total + value, self.count + 1

    def pop_mean(self) -> float | None:
        mean = self.total / self.count if self.count else None
        self.total, self.count = 0.0, 0
        return mean


def append_record(path: str, record: dict) -> None:
    """One JSON line per record; the file is the run's training curve (steps, images, CPU-hours, loss, FID)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_records(path: str) -> list[dict]:
    """Every record of a training_log.jsonl, in order; a clear error for a missing or empty file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training log not found: {path}")
    with open(path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    if not records:
        raise ValueError(f"training log {path} is empty")
    return records


def eval_record(records: list[dict], evaluation: dict, step: int) -> dict:
    """An FID record for ``step`` from an evaluate JSON; the step must be one the log has a checkpoint record of."""
    at_step = [r for r in records if r["step"] == step and "images_seen" in r]
    if not at_step:
        raise ValueError(f"the training log has no record at step {step}; evaluate the pipeline of a checkpoint step")
    n = evaluation["num_samples"]
    return {"step": step, "images_seen": at_step[0]["images_seen"], f"fid_{n}": evaluation["fid"],
            f"kid_{n}": evaluation["kid_mean"],
            "fid_protocol": f"{evaluation['sampler']}-{evaluation['steps']}, seed {evaluation['seed']}, "
                            f"{evaluation['mixed_precision']}, reference {evaluation['reference']['num_images']} "
                            f"train images (pipeline.evaluate)"}


SHIFTED_KEYS = ("step", "images_seen", "cpu_hours", "wall_hours")


def restart_records(records: list[dict]) -> list[dict]:
    """The log's warm-restart records ({"step", "restart"}), in order."""
    return [record for record in records if "restart" in record]


def continue_log(records: list[dict], run_records: list[dict], restart_step: int | None = None,
                 restart_note: str | None = None) -> list[dict]:
    """``records`` brought up to date with ``run_records``, the log of the run that continues it.

    Without ``restart_step``: joined at ``records``' last restart record, or, when it has none, simply
    ``run_records``. With ``restart_step`` (and its ``restart_note``): a new restart record at that checkpoint step,
    after which the records of ``records`` are dropped. ``run_records`` count their steps from the restart; their
    step, images and CPU/wall hours are shifted by the checkpoint record at the restart step. ValueError when that
    step has no checkpoint record or the new restart precedes an earlier one."""
    restarts = restart_records(records)
    if restart_step is None:
        if not restarts:
            return list(run_records)
        restart_step, restart_note = restarts[-1]["step"], restarts[-1]["restart"]
        kept = records[:records.index(restarts[-1])]
    else:
        if not restart_note:
            raise ValueError("a restart needs a note saying what the new run started from")
        if restarts and restart_step < restarts[-1]["step"]:
            raise ValueError(f"restart step {restart_step} precedes the log's last restart at step "
                             f"{restarts[-1]['step']}")
        kept = [record for record in records  # a repeated restart at the same step replaces the earlier one
                if record["step"] < restart_step or (record["step"] == restart_step and "restart" not in record)]
    start = next((record for record in kept if record["step"] == restart_step and "cpu_hours" in record), None)
    if start is None:
        raise ValueError(f"the training log has no checkpoint record at step {restart_step} to restart from")
    offsets = {key: start.get(key, 0) for key in SHIFTED_KEYS}
    shifted = [{**record, **{key: record[key] + offsets[key] for key in SHIFTED_KEYS if key in record}}
               for record in run_records]
    return kept + [{"step": restart_step, "restart": restart_note}] + shifted


def write_records(path: str, records: list[dict]) -> None:
    """Replace the log at ``path`` with ``records``, written beside it and renamed into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    os.replace(partial, path)


def fid_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """FID records grouped into curves by sample count and sampler ("FID-2000, ddpm-20"): numbers measured with
    different samplers are not one curve."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key in record:
            if re.fullmatch(r"fid_\d+", key):  # not fid_protocol
                sampler = record.get("fid_protocol", "").split(",")[0]
                label = key.replace("fid_", "FID-") + (f", {sampler}" if sampler else "")
                series.setdefault(label, []).append((record["step"], record[key]))
    return {label: sorted(points) for label, points in sorted(series.items())}


def plot_training_log(records: list[dict], path: str) -> None:
    """Loss (mean over each logging interval, log scale), the learning rate, and any FID curves against the
    optimisation step."""
    from .evaluation.plots import PALETTE, line_chart

    def panel(curves: dict[tuple, list[tuple[int, float]]], y_label: str, log_y: bool = False) -> dict:
        return {"lines": {color: ([s for s, _ in points], [v for _, v in points], 2)
                          for color, points in curves.items()},
                "markers": curves, "log_y": log_y, "y_label": y_label}

    losses = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    rates = [(r["step"], r["lr"]) for r in records if r.get("lr") is not None]
    panels = [panel({PALETTE[0]: losses}, "training loss (mean since the previous record), log scale", log_y=True)]
    legend = {"loss": PALETTE[0]}
    if rates:
        panels.append(panel({PALETTE[-1]: rates}, "learning rate at the checkpoint"))
        legend["learning rate"] = PALETTE[-1]
    fids = fid_series(records)
    if fids:
        colors = dict(zip(fids, PALETTE[1:-1]))
        panels.append(panel({colors[label]: points for label, points in fids.items()},
                            "FID (EMA weights) against the training-split reference"))
        legend.update(colors)
    clocked = [r for r in records if "cpu_hours" in r]
    last = clocked[-1] if clocked else records[-1]
    title = f"training curve: {last['step']:,} steps, {last['images_seen']:,} images" + (
        f", {last['cpu_hours']:.2f} CPU-hours at the last checkpoint" if clocked else "") + "".join(
        f"; warm restart at step {record['step']:,}" for record in restart_records(records))
    line_chart(path, title, "optimisation step", panels, legend, min_x=0, max_x=max(r["step"] for r in records))


def read_training_log(path: str | None, step: int | None = None) -> dict | None:
    """The checkpoint record of the shipped weights (cumulative steps, images, CPU- or GPU-hours): the one at
    ``step``, by default the last; ``last_step`` says how far the run went on, ``restarts`` lists the warm restarts
    before it. None without a log."""
    if not path:
        return None
    records = read_records(path)
    checkpoints = [record for record in records if "cpu_hours" in record or "gpu_hours" in record]
    if not checkpoints:
        raise ValueError(f"training log {path} has no checkpoint records (step, images_seen, cpu_hours or "
                         "gpu_hours)")
    chosen = checkpoints[-1] if step is None else next((r for r in checkpoints if r["step"] == step), None)
    if chosen is None:
        raise ValueError(f"training log {path} has no checkpoint record at step {step}")
    restarts = [record for record in restart_records(records) if record["step"] < chosen["step"]]
    return {**chosen, "last_step": checkpoints[-1]["step"], "restarts": restarts}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, help="training_log.jsonl written by train_unet.py")
    parser.add_argument("--plot", help="PNG to write")
    parser.add_argument("--add_eval", help="pipeline.evaluate JSON of the EMA weights of checkpoint --step")
    parser.add_argument("--step", type=int, help="checkpoint step that --add_eval measured")
    parser.add_argument("--update_from", help="training_log.jsonl of the run that --log's run is, or that continues "
                        "it from its last restart (or from --restart_step)")
    parser.add_argument("--restart_step", type=int, help="checkpoint step of --log whose weights --update_from's run "
                        "was warm-started from (train_unet.py --init_from)")
    parser.add_argument("--restart_note", help="what the restarted run started from and what it reset")
    parser.add_argument("--shipped_step", type=int, metavar="STEP",
                        help="the checkpoint step of the shipped weights (after --update_from): fail unless the log "
                        "has a checkpoint record there, and drop the later records, so that the log, its curve and "
                        "the compute it states describe those weights")
    args = parser.parse_args(argv)
    if not (args.plot or args.add_eval or args.update_from or args.shipped_step is not None):
        parser.error("nothing to do: give --update_from, --shipped_step, --add_eval and/or --plot")
    if args.add_eval and args.step is None:
        parser.error("--add_eval needs --step")
    if args.restart_step is not None and not (args.update_from and args.restart_note):
        parser.error("--restart_step needs --update_from and --restart_note")
    if args.update_from:
        run_records = read_records(args.update_from)
        records = read_records(args.log) if os.path.isfile(args.log) else []
        records = continue_log(records, run_records, args.restart_step, args.restart_note)
        write_records(args.log, records)
        print(f"updated {args.log} from {args.update_from} ({len(records)} records)")
    records = read_records(args.log)
    if args.shipped_step is not None:
        read_training_log(args.log, args.shipped_step)
        later = [record for record in records if record["step"] > args.shipped_step]
        if later:
            records = [record for record in records if record["step"] <= args.shipped_step]
            write_records(args.log, records)
            print(f"dropped {len(later)} records after step {args.shipped_step} from {args.log}")
    if args.add_eval:
        with open(args.add_eval) as handle:
            record = eval_record(records, json.load(handle), args.step)
        append_record(args.log, record)
        records.append(record)
        print(f"appended {record}")
    if args.plot:
        plot_training_log(records, args.plot)
        print(f"wrote {args.plot} ({len(records)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

