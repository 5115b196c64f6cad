"""The `hanota` command line: thin click commands over the library modules.

Exit codes: 0 success, 1 usage error or a negative verdict (e.g. `image verify`
on an invalid image), 2 a device, file-format or protocol failure.
"""
from __future__ import annotations

import json
import sys

import click

from . import images
from .boardspec import BoardChoice
from .clitypes import U16, U32, BasedInt, Eui64, Version, exit_code
from .errors import HanotaError
from .keys import generate_keys, load_private_key, load_public_key


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hanota")
def cli():
    """hanota: OTA firmware updates for GB smart-metering HAN devices on MicroPython boards."""


# ---------------------------------------------------------------- keys

@cli.group()
def keys():
    """Signing keys (ECDSA P-256)."""


@keys.command("generate")
@click.argument("out_dir", type=click.Path(file_okay=False))
def keys_generate(out_dir):
    """Write a development key pair to OUT_DIR: private.pem, public.pem, public.bin.

    public.bin is the raw 65-byte point that devices pin. Existing keys are never overwritten.
    """
    paths = generate_keys(out_dir)
    point = load_public_key(paths.public_bin)
    click.echo("wrote %s, %s, %s" % (paths.private, paths.public, paths.public_bin))
    click.echo("key id %s" % images.p256.key_id(point).hex())


# ---------------------------------------------------------------- image

@cli.group()
def image():
    """Build, inspect and verify OTA upgrade files."""


@image.command("build")
@click.argument("payload", type=click.File("rb"))
@click.option("--role", type=click.Choice(sorted(images.ROLE_IMAGE_TYPES)), required=True,
              help="Device role; sets the default image type.")
@click.option("--version", "version", type=Version(), required=True,
              help="File version: integer (0x hex) or dotted a.b.c.d.")
@click.option("--key", "key_path", type=click.Path(dir_okay=False), required=True,
              help="Private key (PEM) to sign with.")
@click.option("--manufacturer", type=U16, default=images.DEFAULT_MANUFACTURER, show_default=True,
              help="Manufacturer code.")
@click.option("--image-type", type=U16, default=None, help="Image type (default: the role's).")
@click.option("--min-hw", type=U16, default=None, help="Minimum hardware version (with --max-hw).")
@click.option("--max-hw", type=U16, default=None, help="Maximum hardware version (with --min-hw).")
@click.option("--dest", type=Eui64(), default=None, help="Destination EUI-64 (device-specific file).")
@click.option("--security-version", type=U32, default=0, show_default=True,
              help="Anti-rollback counter carried in the descriptor.")
@click.option("--header-string", default=None, help="Header string (at most 32 bytes).")
@click.option("--payload-kind", type=click.Choice(sorted(images.otafile.PAYLOAD_KINDS)), default=None,
              help="What the payload is (default: detected from its first bytes).")
@click.option("--board-family", type=click.Choice(sorted(images.otafile.BOARD_FAMILIES)), default="any",
              show_default=True, help="Board family the payload is built for.")
@click.option("--compress", is_flag=True,
              help="Send the payload zlib-compressed, in independently decoded segments.")
@click.option("--delta-from", "delta_from", type=click.Path(dir_okay=False, exists=True),
              default=None, help="Send a patch against OLD, the payload the device runs (or an "
              "upgrade file whose payload it is); compressed, in segments.")
@click.option("--window-bits", type=click.IntRange(9, 15), default=images.DEFAULT_WINDOW_BITS,
              show_default=True, help="zlib window of --compress/--delta-from: 2^N bytes "
              "(devices take at most 12).")
@click.option("--segment-max", type=click.IntRange(4200, 8192), default=images.DEFAULT_SEGMENT_MAX,
              show_default=True, help="Longest segment payload (a device holds one at a time).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output file.")
def image_build(payload, role, version, key_path, manufacturer, image_type, min_hw, max_hw, dest,
                security_version, header_string, payload_kind, board_family, compress, delta_from,
                window_bits, segment_max, output):
    """Wrap PAYLOAD (the manufacturer image) in a signed Zigbee OTA upgrade file.

    An esp-app payload (given, or detected by its 0xE9 first byte) must be a valid ESP-IDF
    app image: header, segments, checksum, SHA-256 and app descriptor are checked, and a
    merged full-flash image is refused with the command that takes the app out of it.

    --compress and --delta-from send the same target smaller (descriptor version 2, which
    names the target's SHA-256 and size, and for a delta the base's): the device decodes
    as the blocks arrive and checks the target before staging it.
    """
    if compress and delta_from:
        raise click.UsageError("--compress and --delta-from exclude each other (a delta is "
                               "compressed already)")
    if (min_hw is None) != (max_hw is None):
        raise click.UsageError("give both --min-hw and --max-hw, or neither")
    if header_string is not None and len(header_string.encode()) > 32:
        raise click.UsageError("--header-string is %d bytes; at most 32" % len(header_string.encode()))
    key = load_private_key(key_path)
    body = payload.read()
    family = images.otafile.BOARD_FAMILIES[board_family]
    kind = images.check_payload(
        body, images.otafile.PAYLOAD_KINDS[payload_kind] if payload_kind else None, family,
        path=payload.name)
    data = images.build_image(
        body, key=key, version=version, role=role, manufacturer=manufacturer,
        image_type=image_type, min_hw=min_hw, max_hw=max_hw, destination=dest,
        security_version=security_version, header_string=header_string,
        payload_kind=kind, board_family=family,
        encoding="delta" if delta_from else "zlib" if compress else "full",
        base=images.read_base(delta_from) if delta_from else None,
        window_bits=window_bits, segment_max=segment_max)
    with open(output, "wb") as f:
        f.write(data)
    click.echo("wrote %s (%d bytes, version 0x%08x, image type 0x%04x%s)"
               % (output, len(data), version, image_type or images.ROLE_IMAGE_TYPES[role],
                  ", %s of a %d-byte target" % ("delta" if delta_from else "zlib", len(body))
                  if compress or delta_from else ""))


@image.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def image_inspect(file, as_json):
    """Show every header field and sub-element of an OTA file (foreign files too)."""
    info = images.inspect_image(file)
    if as_json:
        click.echo(json.dumps(info))
        return
    _print_inspect(info)


def _print_inspect(info: dict) -> None:
    hexed = {"field_control": 4, "manufacturer_code": 4, "image_type": 4, "file_version": 8,
             "header_version": 4, "min_hw_version": 4, "max_hw_version": 4}
    for k, v in info.items():
        if k == "sub_elements":
            click.echo("sub_elements:")
            for el in v:
                click.echo("  tag 0x%04x  %d bytes" % (el["tag"], el["length"]))
        elif isinstance(v, dict):
            click.echo("%s:" % k)
            for sub, text in v.items():
                click.echo("  %s: %s" % (sub, text))
        elif k in hexed and isinstance(v, int):
            click.echo("%s: 0x%0*x" % (k, hexed[k], v))
        else:
            click.echo("%s: %s" % (k, "-" if v is None else v))


@image.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--pubkey", "pubkeys", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Trusted public key (public.bin or PEM); repeat for several.")
@click.option("--for-device", "for_device", type=click.Path(dir_okay=False, exists=True),
              default=None, help="A device configuration (its hanota.json): also check the "
              "device would take the file (manufacturer, image type, hardware range, "
              "destination, security version).")
@click.option("--board", type=BoardChoice(), default=None,
              help="With --for-device: also check the payload kind and size against this "
              "board's banks.")
@click.option("--running", type=Version(), default=None,
              help="With --for-device: the version the device runs (the file must be newer).")
@click.option("--floor", type=U32, default=0, show_default=True,
              help="With --for-device: the device's anti-rollback floor (security version).")
@click.option("--base", "base_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="For a delta file: the image it applies to (payload or upgrade file); the "
              "patch is applied and the target's SHA-256 compared with the descriptor's.")
def image_verify(file, pubkeys, for_device, board, running, floor, base_path):
    """Exit 0 and print "valid" only for an intact image signed by one of the keys.

    Otherwise exit 1 and name the reason (tampered, wrong key, unsigned, truncated, malformed;
    with --for-device, the device's own rejection reason, such as wrong-manufacturer).
    """
    if for_device is None and (board or running is not None or floor):
        raise click.UsageError("--board, --running and --floor go with --for-device")
    keys_ = [load_public_key(p) for p in pubkeys]
    result = images.verify_image(file, keys_,
                                 base=images.read_base(base_path) if base_path else None)
    if result.verdict is images.Verdict.VALID and for_device is not None:
        try:
            with open(for_device) as f:
                config = json.load(f)
        except ValueError as e:
            raise click.UsageError("%s is not JSON: %s" % (for_device, e))
        checked = images.check_for_device(file, config, board=board, running=running,
                                          floor=floor)
        if checked.verdict is images.Verdict.VALID:
            result = images.VerifyResult(result.verdict, "", "%s; %s" % (
                result.message, checked.message.split(": ", 1)[1]))
        else:
            result = checked
    if result.verdict is images.Verdict.VALID:
        click.echo("valid: %s" % result.message)
        return
    click.echo("invalid (%s, %s): %s" % (result.verdict.value, result.reason, result.message), err=True)
    sys.exit(1)


# ---------------------------------------------------------------- virtual boards

@cli.group()
def vboard():
    """Virtual boards: real MicroPython over emulated flash, with a console pty and a ROM loader."""


def _print_board(info: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info))
        return
    for k in ("name", "board", "console", "link", "rom_loader", "dir", "eui64", "role", "pid"):
        if info.get(k) is not None:
            click.echo("%-10s %s" % (k, info[k]))


@vboard.command("start")
@click.option("--board", "kind", type=BoardChoice(virtual=True),
              default="vboard-esp32", show_default=True)
@click.option("--name", required=True, help="Board name (also its folder under $HANOTA_HOME/vboards).")
@click.option("--role", type=click.Choice(sorted(images.ROLE_IMAGE_TYPES)), default=None,
              help="Role the board will be deployed as (remembered for deploy).")
@click.option("--dir", "dir_", type=click.Path(file_okay=False), default=None,
              help="Keep the board's flash and state here instead of the registry folder.")
@click.option("--power-cut-at", type=BasedInt(), default=None,
              help="Cut the power before flash operation N (counted from this start).")
@click.option("--torn", is_flag=True, help="With --power-cut-at: the cut write lands only half its bytes.")
@click.option("--link-rate", type=BasedInt(), default=None, help="Link rate limit in bytes per second.")
@click.option("--hub", default=None, help="Hub UDP address HOST:PORT for the link (default 127.0.0.1:17719).")
@click.option("--clock-offset", type=float, default=None, metavar="SECONDS",
              help="Start the board's wall clock (time.time/gmtime/localtime, where the port has "
                   "them) this many seconds off the host's, e.g. -10800; devices take UTC from the hub.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def vboard_start(kind, name, role, dir_, power_cut_at, torn, link_rate, hub, clock_offset, as_json):
    """Start a virtual board in the background and print where to reach it.

    A new board is a fresh chip: nothing to boot until firmware is flashed (ESP32, through
    the ROM loader) or deployed; the ROM loader answers regardless.
    """
    from .vboard import board as vb

    if torn and power_cut_at is None:
        raise click.UsageError("--torn needs --power-cut-at")
    info = vb.start_background(name, kind, dir_, role=role, power_cut_at=power_cut_at, torn=torn,
                               link_rate=link_rate, hub=hub, clock_offset=clock_offset)
    _print_board(info.public(), as_json)


@vboard.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def vboard_list(as_json):
    """List known virtual boards and whether they run."""
    from .vboard import board as vb

    boards = vb.list_boards()
    if as_json:
        click.echo(json.dumps([dict(b.public(), running=b.ready) for b in boards]))
        return
    if not boards:
        click.echo("no virtual boards (in %s)" % vb.registry())
    for b in boards:
        click.echo("%-12s %-16s %-8s console %s  link %s" % (b.name, b.board, "running" if b.ready else "stopped",
                                                            b.console or "-", b.link or "-"))


@vboard.command("stop")
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Stop every running board.")
def vboard_stop(name, all_):
    """Stop a virtual board (its flash is kept) or all of them."""
    from .vboard import board as vb

    if not name and not all_:
        raise click.UsageError("give a board NAME or --all")
    names = [b.name for b in vb.list_boards() if b.ready] if all_ else [name]
    for n in names:
        click.echo("%s: %s" % (n, "stopped" if vb.stop_background(n) else "was not running"))


@vboard.command("console")
@click.argument("name")
def vboard_console(name):
    """Attach this terminal to a board's REPL (mpremote repl; Ctrl-] leaves)."""
    import os as _os
    import shutil

    from .vboard import board as vb

    info = vb.read_info(vb.board_dir(name))
    if not info.ready:
        raise HanotaError("board %s is not running" % name)
    mpremote = shutil.which("mpremote") or str(__import__("pathlib").Path(sys.executable).with_name("mpremote"))
    _os.execv(mpremote, [mpremote, "connect", info.console, "resume", "repl"])


# ---------------------------------------------------------------- firmware and real boards

@cli.group()
def firmware():
    """Virtual firmware for the virtual boards."""


@firmware.command("build")
@click.option("--board", "kind", type=BoardChoice(virtual=True),
              default="vboard-esp32", show_default=True)
@click.option("--version", "version", required=True, help="Version string (esp_app_desc_t), e.g. 1.0.0.")
@click.option("--secure-version", type=BasedInt(32), default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Output folder.")
def firmware_build(kind, version, secure_version, output):
    """Build the device code into firmware: firmware.bin (flash at 0x1000) and app.bin (OTA payload).

    For vboard-nrf52840 the payload is app.romfs (an app bank image).
    """
    from . import fwbuild

    out = fwbuild.build(kind, version, output, secure_version=secure_version)
    for k, v in out.items():
        click.echo("%-10s %s" % (k, v))


@cli.group()
def board():
    """Real boards (and virtual ones through the same paths): flash, deploy, doctor."""


@board.command("flash")
@click.option("--board", "kind", type=BoardChoice(flasher=True), required=True)
@click.option("--port", required=True,
              help="Serial port or pyserial URL (a virtual board's rom_loader); for nrf52840 the "
                   "UF2 drive folder, or a serial port for adafruit-nrfutil DFU.")
@click.option("--firmware", "fw", type=click.Path(dir_okay=False), required=True,
              help="MicroPython firmware: .bin (ESP32); .uf2, .bin or DFU .zip (nRF52840).")
@click.option("--offset", type=BasedInt(32), default=None, help="Write offset (default: per chip).")
@click.option("--erase", is_flag=True, help="Erase the whole flash first (ESP32).")
def board_flash(kind, port, fw, offset, erase):
    """Flash MicroPython firmware: ESP32 through the ROM loader (esptool library, compressed,
    MD5-verified); nRF52840 by UF2 copy or adafruit-nrfutil serial DFU."""
    from . import flasher

    if flasher.flash_method(kind) == "uf2":
        facts = flasher.flash_nrf52840(port, fw, address=offset, board=kind)
        click.echo("flashed %d bytes to %s by %s" % (facts["size"], facts["target"], facts["method"]))
        return
    facts = flasher.flash_firmware(port, fw, board=kind, offset=offset, erase=erase)
    click.echo("flashed %d bytes at 0x%x on %s (%s, MAC %s), verified"
               % (facts["size"], facts["offset"], port, facts["chip"], facts["mac"]))


def _read(path):
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


@board.command("deploy")
@click.option("--board", "kind", required=True,
              type=BoardChoice())
@click.option("--port", required=True, help="The board's REPL serial port (a virtual board's console).")
@click.option("--role", type=click.Choice(sorted(images.ROLE_IMAGE_TYPES)), required=True)
@click.option("--key", "keys_", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Public key to pin (public.bin or PEM); repeat to pin several (rotation).")
@click.option("--via", type=click.Choice(["mpremote", "ampy"]), default="mpremote", show_default=True)
@click.option("--eui64", default=None, help="EUI-64 (default: from the board's unique id).")
@click.option("--install-code", default=None, help="Install code hex with CRC (default: a new random one).")
@click.option("--manufacturer", type=U16, default=images.DEFAULT_MANUFACTURER, show_default=True)
@click.option("--hw-version", type=U16, default=0x0100, show_default=True)
@click.option("--version", "version", type=Version(), default="1", show_default=True,
              help="OTA file version of the firmware/app now on the board.")
@click.option("--hub", default=None, help="Hub link (udp:HOST:PORT); virtual boards use their own link.")
@click.option("--wifi", default=None, metavar="SSID", help="Wi-Fi network the board joins (ESP32).")
@click.option("--wifi-key", default="", metavar="KEY", help="Its passphrase (with --wifi).")
@click.option("--supplier-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="GBCS: the responsible Supplier's DS Organisation certificate (CS06 signatures; "
                   "dates not checked). Re-deploy with another to change Supplier.")
@click.option("--acb-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="GBCS: the ACB's KA certificate (with --supplier-cert); the device's own KA key "
                   "pair is made here and its public key printed for the DCC's registration data.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def board_deploy(kind, port, role, keys_, via, eui64, install_code, manufacturer, hw_version, version, hub,
                 wifi, wifi_key, supplier_cert, acb_cert, as_json):
    """Copy the device code and configuration to a board, verify by hashing on the device, reset it.

    Prints the board's EUI-64 and install code: register them with the hub
    (`hanota registry add-device`) so that the device can join.
    """
    from . import deploy

    if wifi_key and not wifi:
        raise click.UsageError("--wifi-key goes with --wifi SSID")
    if (supplier_cert is None) != (acb_cert is None):
        raise click.UsageError("--supplier-cert and --acb-cert go together (GBCS commissioning)")
    res = deploy.deploy(port, kind, role, list(keys_), via=via, eui64=eui64, install_code=install_code,
                        manufacturer=manufacturer, hw_version=hw_version, version=version, hub=hub,
                        settings={"wifi": {"ssid": wifi, "key": wifi_key}} if wifi else None,
                        supplier_cert=_read(supplier_cert), acb_cert=_read(acb_cert))
    if as_json:
        click.echo(json.dumps(res.as_dict()))
        return
    for path, digest in res.files.items():
        click.echo("  %-28s sha256 %s  verified" % (path, digest[:16]))
    if res.bank:
        click.echo("  app bank %d: %d bytes, sha256 %s  verified" % (res.bank["bank"], res.bank["length"],
                                                                   res.bank["sha256"][:16]))
    click.echo("deployed %s as %s, EUI-64 %s, install code %s" % (port, role, res.eui64, res.install_code))
    if res.ka_public:
        click.echo("GBCS: Supplier %s; device KA public key %s" % (res.supplier_id, res.ka_public))
        click.echo("  record it with the DCC: hanota dcc registry set-ka %s --ka-pub %s"
                   % (res.eui64, res.ka_public))


@board.command("doctor")
@click.argument("port")
@click.option("--board", "kind", type=BoardChoice(), default=None,
              help="Check against this board.toml (default: the real board of the port it reports).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def board_doctor(port, kind, as_json):
    """Check the board at PORT: MicroPython version, port and board, free heap, the modules
    the device code imports, the flash layout against board.toml, and what is deployed.

    Exit 0 when everything hanota needs is there, 1 when something is missing or different
    (each one named), 2 when nothing answers at PORT.
    """
    from . import doctor

    rep = doctor.doctor(port, kind)
    if as_json:
        click.echo(json.dumps(rep.as_dict()))
    else:
        for line in doctor.render(rep):
            click.echo(line)
    if not rep.ok:
        sys.exit(1)


@cli.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), default=".demo", show_default=True,
              help="Where the demo writes its keys, images and reports (recreated).")
def demo_cmd(workdir):
    """Run the whole story through DUIS and exit 0 only if every outcome is the expected one.

    A test PKI, a DCC and a Comms Hub per premises on loopback, four virtual boards; the
    Suppliers sign DUIS requests, POST them to the DCC and read the signed responses."""
    from pathlib import Path

    from . import demo

    rows, report = demo.run_demo(Path(workdir), say=click.echo)
    click.echo("\noutcomes:")
    for r in rows:
        click.echo("  %-4s %-62s expected %-26s got %s" % ("ok" if r.ok else "FAIL", r.step, r.expected, r.got))
    click.echo("HTML report: %s" % report)
    try:
        demo.check(rows)
    except demo.DemoFailure as e:
        click.echo("demo failed: %s" % e, err=True)
        sys.exit(2)
    click.echo("demo passed: %d outcomes as expected (files in %s)" % (len(rows), workdir))


from .hub import cli as hub_cli  # noqa: E402  (serve, status, report, request, registry, hub)

for _cmd in hub_cli.COMMANDS:
    cli.add_command(_cmd)

from .dcc import cli as dcc_cli  # noqa: E402  (dcc, pki, duis)

dcc_cli.register(cli)

from . import gbcs_cli  # noqa: E402  (gbcs decode, verify, build)

gbcs_cli.register(cli)

from .fleet import cli as fleet_cli  # noqa: E402  (fleet plan, register, sim)

cli.add_command(fleet_cli.fleet)


def main(argv=None):
    """Console entry point: maps domain errors to messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="hanota", standalone_mode=False)
    except click.UsageError as e:
        e.show()
        sys.exit(1)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except HanotaError as e:
        click.echo("hanota: %s" % e, err=True)
        sys.exit(exit_code(e))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
