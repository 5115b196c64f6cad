"""The chip behind the virtual ROM loader, as far as esptool looks at it (for `romloader`).

esptool identifies the chip, reads its MAC, crystal and revision from registers, and
probes the SPI flash (JEDEC id, SFDP) by driving the SPI0 controller with WRITE_REG.
`Registers` answers those reads and runs those flash commands.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .romwire import Flash, Reject, RomError


@dataclass(frozen=True)
class Chip:
    """Register map of one chip model, as far as esptool reads it."""

    name: str
    magic_reg: int
    magic: int
    efuse_base: int
    efuse_words: tuple[int, ...]  # words 0..n; words 1/2 are replaced by the MAC
    uart_clkdiv_reg: int
    xtal_hz: int
    fixed_regs: dict[int, int]
    spi_base: int


# ESP32-D0WD-V3 rev v3.0, 40 MHz crystal, no security eFuses burnt:
#  word3: package 1 (bits 9-11), rev bit0 (15), CPU rated 240 MHz (13);
#  word4: CK8M calibration 80 (bits 0-7); word5: rev bit1 (20), default SPI pads.
# RTCCALICFG1 (0x3FF5F06C) with CK8M 80 gives the ROM-calibrated 40 MHz crystal
# (1280 * 15625 * 80 / 40), APB_CTL_DATE bit 31 is rev bit2, GPIO_STRAP 0x13 is
# "download boot".
_ESP32 = Chip(
    name="ESP32",
    magic_reg=0x40001000,
    magic=0x00F01D83,
    efuse_base=0x3FF5A000,
    efuse_words=(0, 0, 0, 0x0000A200, 0x00000050, 0x00100000, 0, 0),
    uart_clkdiv_reg=0x3FF40014,
    xtal_hz=40_000_000,
    fixed_regs={0x3FF5F06C: 1280 << 7, 0x3FF6607C: 0x80000000, 0x3FF44038: 0x13},
    spi_base=0x3FF42000,
)
CHIPS = {"esp32": _ESP32}

# SPI0 controller (offsets from spi_base) and the flash behind it.
_SPI_CMD, _SPI_ADDR, _SPI_USR, _SPI_USR2 = 0x00, 0x04, 0x1C, 0x24
_SPI_MISO_DLEN, _SPI_W0 = 0x2C, 0x80
_SPI_CMD_USR = 1 << 18
_SPI_USR_MISO = 1 << 28
_FLASH_RDID, _FLASH_RDSFDP = 0x9F, 0x5A
_WINBOND = 0xEF
_SFDP = b"SFDP\x06\x01\x00\xff" + b"\x00\x06\x01\x10\x30\x00\x00\xff"


class Registers:
    """The register file of one session: eFuses (with the MAC), fixed values, SPI0."""

    def __init__(self, chip: Chip, mac: bytes, flash: Flash):
        self.chip = chip
        self.flash = flash
        self.values = self._initial(mac)

    def _initial(self, mac: bytes) -> dict[int, int]:
        chip = self.chip
        regs = dict(chip.fixed_regs)
        words = list(chip.efuse_words)
        # esptool reads the MAC as bytes 2..7 of (word2, word1) big-endian.
        words[1] = int.from_bytes(mac[2:6], "big")
        words[2] = int.from_bytes(mac[0:2], "big")
        for i, word in enumerate(words):
            regs[chip.efuse_base + 4 * i] = word
        regs[chip.magic_reg] = chip.magic
        return regs

    def read(self, addr: int, baud: int) -> int:
        """READ_REG; the UART clock divider follows the session's baud rate."""
        if addr == self.chip.uart_clkdiv_reg:
            return round(self.chip.xtal_hz / baud)
        return self.values.get(addr, 0)

    def write(self, data: bytes) -> None:
        """WRITE_REG: 16-byte entries of address, value, mask and delay."""
        if not data or len(data) % 16:
            raise Reject(RomError.INVALID, f"WRITE_REG takes 16-byte entries, got {len(data)}")
        for addr, value, mask, _delay in struct.iter_unpack("<IIII", data):
            value = (self.values.get(addr, 0) & ~mask) | (value & mask)
            if addr == self.chip.spi_base + _SPI_CMD and value & _SPI_CMD_USR:
                self._spi_user_command()
                value &= ~_SPI_CMD_USR  # the command completes at once
            self.values[addr] = value

    def _spi_user_command(self) -> None:
        """Run the SPI flash command set up in the SPI0 registers (RDID, SFDP, RDSR...)."""
        base = self.chip.spi_base
        regs = self.values
        command = regs.get(base + _SPI_USR2, 0) & 0xFF
        if not regs.get(base + _SPI_USR, 0) & _SPI_USR_MISO:
            return
        nbytes = min(4, (regs.get(base + _SPI_MISO_DLEN, 0) + 8) // 8)
        if command == _FLASH_RDID:
            size_id = max(self.flash.size - 1, 1).bit_length()
            reply = bytes((_WINBOND, 0x40, size_id))
        elif command == _FLASH_RDSFDP:
            at = regs.get(base + _SPI_ADDR, 0) >> 8
            reply = _SFDP[at : at + nbytes].ljust(nbytes, b"\xff")
        else:
            reply = b""  # status registers: no protection bits, not busy
        regs[base + _SPI_W0] = int.from_bytes(reply[:nbytes].ljust(nbytes, b"\0"), "little")
