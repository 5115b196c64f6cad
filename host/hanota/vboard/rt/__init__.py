"""Modules that run inside the virtual board's MicroPython process and emulate the chip.

The board process runs with this folder as MICROPYPATH, so the modules import one
another as top-level modules there (`import vflash`); under CPython they form the
package `hanota.vboard.rt` and fall back to relative imports. `machine`, `esp32`
and `nrf` stand in for the ports' modules of the same names; `esp32boot` and
`nrfboot` are the start-up scripts (``micropython -i esp32boot.py``).
"""
