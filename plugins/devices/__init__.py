"""Built-in device profiles."""

from flcore import hookimpl

_MODULE = "flcore_plugins.devices"


@hookimpl
def register_device_profiles(register):
    register("instant", f"{_MODULE}.profiles:Instant", "No device model: every round takes zero virtual seconds.")
    register("drawn", f"{_MODULE}.profiles:Drawn",
             "Per-agent compute speed and bandwidths drawn from named distributions (lognormal, uniform, constant).")
    register("trace", f"{_MODULE}.trace:DeviceTrace", "Per-agent compute speed and bandwidths from a CSV (or Parquet) "
             "device trace.")
