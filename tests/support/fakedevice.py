"""The simulated device the tests talk to the hub with lives in the package
(`hanota.simdevice`, which the benchmarks use too); its names are kept here for the tests."""
from hanota.simdevice import C2S, C2S_MFR, DeviceError, FakeBus, FakeDevice, install_code

__all__ = ["C2S", "C2S_MFR", "DeviceError", "FakeBus", "FakeDevice", "install_code"]
