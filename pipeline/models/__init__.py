"""The networks: the UNet builder and its checks, the attribute encoder, the noise schedules."""
