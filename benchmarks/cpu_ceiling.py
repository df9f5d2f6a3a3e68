"""This CPU's arithmetic ceilings, to say how close a measured GFLOP/s comes to the machine's limit.

    python benchmarks/cpu_ceiling.py          # prints the JSON that train_throughput and sampling_speed embed

``cpu_peak()`` gives the nominal FP32/BF16 peak (cores x clock x FMA width, the clock measured by a dependent-add
chain because a KVM guest's lscpu reports none) and the rate of a large square matmul in each precision, which is
the practical ceiling that convolution-heavy networks can approach.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
import time

CLOCK_PROBE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    unsigned long x = 0, n = 1000000UL;  /* 8e6 cycles, ~3 ms: short enough to run unpreempted on a busy machine */
    double best = 0;
    for (int trial = 0; trial < 300; trial++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (unsigned long i = 0; i < n; i++) {  /* 8 dependent 1-cycle adds per iteration: 8 cycles */
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                             "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ghz = 8.0 * n / ((b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec)) / 1e9;
        if (ghz > best) best = ghz;
    }
    printf("%.4f\n", best);
    return x == 0;
}
"""


def measured_clock_ghz():
    """Core clock: a chain of dependent integer adds retires one add per cycle (fastest of 300 runs of ~3 ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = os.path.join(tmp, "clock.c"), os.path.join(tmp, "clock")
        with open(source, "w") as handle:
            handle.write(CLOCK_PROBE)
        try:
            subprocess.run(["cc", "-O1", "-o", binary, source], check=True, capture_output=True)
            return float(subprocess.run([binary], check=True, capture_output=True, text=True).stdout)
        except (OSError, subprocess.CalledProcessError, ValueError):
            return None


def gemm_ceiling(dtype_name: str, size: int = 2048, repeats: int = 5) -> float | None:
    """GFLOP/s of a large square matmul (MKL/oneDNN) on all threads: a practical upper bound for this CPU. None for
    bf16 on a CPU without native bf16, whose emulated matmul bounds nothing (and takes minutes)."""
    import torch

    from pipeline.pipeline_celeba import native_bf16_cpu

    if dtype_name == "bfloat16" and not native_bf16_cpu():
        return None

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def share_of(achieved: float, ceiling: float | None) -> float | None:
    """``achieved / ceiling``, or None where this CPU has no such ceiling (bf16 without native bf16)."""
    return achieved / ceiling if ceiling else None


def lscpu_fields() -> dict:
    """lscpu's "Key: value" lines as a dict."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in fields.items()}


def cpu_identity() -> dict:
    """Which CPU a measurement ran on: lscpu's model name, its core count and whether it multiplies bf16 natively
    (``pipeline.pipeline_celeba.native_bf16_cpu``, which decides the pipeline's default precision)."""
    from pipeline.pipeline_celeba import native_bf16_cpu

    return {"model_name": lscpu_fields().get("Model name"), "cores": os.cpu_count(), "native_bf16": native_bf16_cpu()}


def cpu_peak() -> dict:
    """Nominal FP32 / BF16 peak of this CPU from lscpu, with the derivation.

    FP32 peak = cores x GHz x 2 (an FMA is 2 FLOPs) x 16 (fp32 lanes of a 512-bit vector) x FMA units.
    AMD family 25 model >= 0x10 is Zen 4: AVX-512 instructions run on two 256-bit FMA pipes, i.e. one 512-bit FMA
    per cycle (FMA units = 1 in 512-bit terms = 32 FP32 FLOP/cycle/core); Intel server cores with two 512-bit FMA
    units have 2. BF16 peak via AVX512_BF16 vdpbf16ps = 2x the fp32 FLOPs per instruction (32 bf16 products
    accumulated into 16 fp32 lanes), at the same throughput, so 2x the FP32 peak.
    """
    fields = lscpu_fields()
    cores = os.cpu_count() or 1
    flags = fields.get("Flags", "").split()
    max_mhz = fields.get("CPU max MHz")
    with open("/proc/cpuinfo") as handle:
        cpuinfo_mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", handle.read()).group(1))
    vendor, family, model = fields.get("Vendor ID", ""), int(fields.get("CPU family", 0)), int(fields.get("Model", 0))
    if "avx512f" in flags:
        lanes = 16
        zen4 = vendor == "AuthenticAMD" and family == 25 and model >= 0x10
        fma_units = 1 if zen4 else 2
    else:
        lanes, fma_units = 8, 2
    measured = measured_clock_ghz()
    nominal_ghz = float(max_mhz) / 1000 if max_mhz else cpuinfo_mhz / 1000
    result = {"lscpu_model_name": fields.get("Model name"), "vendor": vendor, "family": family, "model": model,
              "cores": cores, "lscpu_max_mhz": max_mhz, "cpuinfo_mhz": cpuinfo_mhz,
              "avx512_bf16": "avx512_bf16" in flags, "fp32_lanes": lanes, "fma_units_512bit": fma_units,
              "measured_clock_ghz": measured, "nominal_ghz": nominal_ghz,
              "derivation": (f"FP32 peak = {cores} cores x GHz x 2 (FMA) x {lanes} lanes x {fma_units} FMA unit(s); "
                             "BF16 (vdpbf16ps) = 2 x FP32. Zen 4 (AMD family 25, model >= 0x10) executes 512-bit "
                             "FMAs on two 256-bit pipes = 1 x 512-bit FMA/cycle. lscpu gives no max MHz in this "
                             "KVM guest: GHz = the clock measured by a dependent-add chain (1 add/cycle) when "
                             "available, else cpuinfo MHz.")}
    ghz = measured or nominal_ghz
    result["fp32_peak_gflops"] = cores * ghz * 2 * lanes * fma_units
    result["bf16_peak_gflops"] = 2 * result["fp32_peak_gflops"] if "avx512_bf16" in flags else None
    result["fp32_peak_gflops_at_cpuinfo_mhz"] = cores * cpuinfo_mhz / 1000 * 2 * lanes * fma_units
    result["gemm_fp32_gflops"] = gemm_ceiling("float32")
    result["gemm_bf16_gflops"] = gemm_ceiling("bfloat16")
    return result


if __name__ == "__main__":
    print(json.dumps(cpu_peak(), indent=1))
