"""The virtual board: the device code on the MicroPython unix port over an emulated flash."""
