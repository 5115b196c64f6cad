"""`hanota keys` and `hanota image`: build, inspect, verify, through the real CLI entry point."""
import json
import os
import random
import stat

import pytest

from hanota import images
from hanota.cli import cli, main
from hanota.errors import KeyFileError
from hanota.keys import generate_keys, load_public_key
from support.espapps import small_app
from support.otabuild import new_key, raw_pub


def run(capsys, *args):
    """Run `hanota ARGS` in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as ei:
        main(list(args))
    out = capsys.readouterr()
    return ei.value.code, out.out, out.err


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d)
    return d


@pytest.fixture
def payload(tmp_path):
    p = tmp_path / "payload.bin"
    p.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(2000)))
    return p


def build(capsys, keydir, payload, out, *extra):
    code, stdout, err = run(capsys, "image", "build", str(payload), "--role", "ppmid", "--version",
                            "0x00020001", "--key", str(keydir / "private.pem"), "-o", str(out), *extra)
    assert code == 0, err
    return out


# ------------------------------------------------------------------ keys

def test_keys_generate_writes_a_pair_and_refuses_to_overwrite(tmp_path, capsys):
    d = tmp_path / "k"
    code, out, _ = run(capsys, "keys", "generate", str(d))
    assert code == 0
    pub = (d / "public.bin").read_bytes()
    assert len(pub) == 65 and pub[0] == 4
    assert load_public_key(d / "public.pem") == pub
    assert stat.S_IMODE(os.stat(d / "private.pem").st_mode) == 0o600
    assert images.p256.key_id(pub).hex() in out
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    code, _, err = run(capsys, "keys", "generate", str(d))
    assert code == 2 and "refusing to overwrite" in err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_public_key_loader_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x04" + bytes(64))  # right length, not on the curve
    with pytest.raises(KeyFileError) as ei:
        load_public_key(bad)
    assert ei.value.reason == "key-format"
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "missing.pem")


# ------------------------------------------------------------------ build + inspect

def test_build_then_inspect_json_reports_every_field(tmp_path, capsys, keydir, payload):
    out = build(capsys, keydir, payload, tmp_path / "a.ota", "--manufacturer", "0x1A2B",
                "--min-hw", "0x0101", "--max-hw", "0x02ff", "--dest", "00:11:22:33:44:55:66:77",
                "--security-version", "5", "--header-string", "demo image")
    code, stdout, _ = run(capsys, "image", "inspect", str(out), "--json")
    assert code == 0
    info = json.loads(stdout)
    expect = {
        "format": "zigbee", "header_version": 0x0100, "header_length": 68, "field_control": 6,
        "manufacturer_code": 0x1A2B, "image_type": 0x0084, "file_version": 0x00020001,
        "stack_version": 2, "header_string": "demo image", "total_image_size": out.stat().st_size,
        "min_hw_version": 0x0101, "max_hw_version": 0x02FF, "destination": "00:11:22:33:44:55:66:77",
        "sub_elements": [{"tag": 0xF0A0, "length": 40}, {"tag": 0, "length": 2000},
                         {"tag": 0xF0A1, "length": 72}],
        "integrity_code_ok": None, "signed": True,
        "key_id": images.p256.key_id((keydir / "public.bin").read_bytes()).hex(),
        "security_version": 5,
    }
    for k, v in expect.items():
        assert info[k] == v, k
    assert info["manufacturer_image_hash"] == info["upgrade_image_sha256"]


def test_role_sets_image_type(tmp_path, capsys, keydir, payload):
    for role, itype in images.ROLE_IMAGE_TYPES.items():
        out = tmp_path / (role + ".ota")
        code, _, err = run(capsys, "image", "build", str(payload), "--role", role, "--version", "3",
                           "--key", str(keydir / "private.pem"), "-o", str(out))
        assert code == 0, err
        assert images.inspect_image(out)["image_type"] == itype


def test_dotted_version(tmp_path, capsys, keydir, payload):
    out = tmp_path / "v.ota"
    run(capsys, "image", "build", str(payload), "--role", "althan", "--version", "1.2.3.4",
        "--key", str(keydir / "private.pem"), "-o", str(out))
    assert images.inspect_image(out)["file_version"] == 0x01020304


@pytest.mark.parametrize("extra,needle", [
    (["--min-hw", "1"], "--max-hw"),
    (["--header-string", "x" * 33], "at most 32"),
    (["--manufacturer", "0x10000"], "out of range"),
    (["--dest", "0011"], "16 hex digits"),
])
def test_build_usage_errors_exit_1(tmp_path, capsys, keydir, payload, extra, needle):
    out = tmp_path / "x.ota"
    code, _, err = run(capsys, "image", "build", str(payload), "--role", "ppmid", "--version", "1",
                       "--key", str(keydir / "private.pem"), "-o", str(out), *extra)
    assert code == 1 and needle in err
    assert not out.exists()


def test_build_with_a_public_key_as_private_fails_clearly(tmp_path, capsys, keydir, payload):
    code, _, err = run(capsys, "image", "build", str(payload), "--role", "ppmid", "--version", "1",
                       "--key", str(keydir / "public.pem"), "-o", str(tmp_path / "x.ota"))
    assert code == 2 and "private key" in err


def test_inspect_non_ota_file_exits_2_with_one_line(tmp_path, capsys, payload):
    code, out, err = run(capsys, "image", "inspect", str(payload))
    assert code == 2
    assert err.count("\n") == 1 and "not a Zigbee OTA file" in err


def test_inspect_missing_file(tmp_path, capsys):
    code, _, err = run(capsys, "image", "inspect", str(tmp_path / "nope.ota"))
    assert code == 2 and "cannot read" in err


def test_inspect_vectors(vectors_dir, capsys):
    code, out, _ = run(capsys, "image", "inspect", "--json",
                       str(vectors_dir / "herdsman-integrity-code-1166-012B-24031511.zigbee"))
    info = json.loads(out)
    assert code == 0
    assert info["integrity_code_ok"] is True and info["signed"] is False and info["key_id"] is None
    assert info["sub_elements"] == [{"tag": 0, "length": 268632}, {"tag": 3, "length": 16}]
    code, out, _ = run(capsys, "image", "inspect", str(vectors_dir / "herdsman-zbminir2_v1.0.8.ota"))
    assert code == 0 and "ota-file-test" in out and "0x1286" in out


# ------------------------------------------------------------------ verify

def test_verify_valid(tmp_path, capsys, keydir, payload):
    out = build(capsys, keydir, payload, tmp_path / "a.ota")
    code, stdout, _ = run(capsys, "image", "verify", str(out), "--pubkey", str(keydir / "public.bin"))
    assert code == 0 and stdout.startswith("valid")


def test_verify_with_rotated_keys(tmp_path, capsys, keydir, payload):
    other = tmp_path / "other"
    generate_keys(other)
    out = build(capsys, keydir, payload, tmp_path / "a.ota")
    code, _, _ = run(capsys, "image", "verify", str(out), "--pubkey", str(other / "public.bin"),
                     "--pubkey", str(keydir / "public.pem"))
    assert code == 0


def test_verify_wrong_key(tmp_path, capsys, keydir, payload):
    other = tmp_path / "other"
    generate_keys(other)
    out = build(capsys, keydir, payload, tmp_path / "a.ota")
    code, _, err = run(capsys, "image", "verify", str(out), "--pubkey", str(other / "public.bin"))
    assert code == 1 and "wrong key" in err and "unknown-key" in err


def test_verify_unsigned_vector(vectors_dir, capsys, keydir):
    code, _, err = run(capsys, "image", "verify", str(vectors_dir / "herdsman-zbminir2_v1.0.8.ota"),
                       "--pubkey", str(keydir / "public.bin"))
    assert code == 1 and "unsigned" in err


def test_verify_truncated(tmp_path, capsys, keydir, payload):
    out = build(capsys, keydir, payload, tmp_path / "a.ota")
    data = out.read_bytes()
    for n in (30, 500, len(data) - 1):
        out.write_bytes(data[:n])
        code, _, err = run(capsys, "image", "verify", str(out), "--pubkey", str(keydir / "public.bin"))
        assert code == 1 and "truncated" in err, n


def test_verify_key_substituted_in_signature(tmp_path, capsys, keydir, payload):
    """Re-signing with another key but keeping our key id must not verify."""
    out = build(capsys, keydir, payload, tmp_path / "a.ota")
    data = bytearray(out.read_bytes())
    forged = images.build_image(payload.read_bytes(), key=new_key(), version=0x00020001, role="ppmid")
    data[-64:] = forged[-64:]
    out.write_bytes(bytes(data))
    code, _, err = run(capsys, "image", "verify", str(out), "--pubkey", str(keydir / "public.bin"))
    assert code == 1 and "tampered" in err


def flip_positions(data: bytes, regions: dict[str, tuple[int, int]], per_region: int, seed: int):
    rnd = random.Random(seed)
    for name, (a, b) in regions.items():
        span = range(a, b)
        picks = list(span) if b - a <= per_region else rnd.sample(span, per_region)
        for pos in picks:
            yield name, pos, rnd.randrange(8)


def test_every_region_bit_flip_fails_verification(tmp_path):
    """A flipped bit anywhere (header, payload, descriptor, signature) must fail; sweep positions."""
    key = new_key()
    pub = raw_pub(key)
    payload = bytes(random.Random(2).randrange(256) for _ in range(300))
    data = images.build_image(payload, key=key, version=7, role="hcalcs", min_hw=1, max_hw=2)
    hl = 60
    regions = {
        "header": (0, hl),
        "descriptor": (hl, hl + 46),
        "image element": (hl + 46, len(data) - 78),
        "signature": (len(data) - 78, len(data)),
    }
    path = tmp_path / "f.ota"
    path.write_bytes(data)
    assert images.verify_image(path, [pub]).verdict is images.Verdict.VALID
    tried = 0
    for name, pos, bit in flip_positions(data, regions, per_region=10_000, seed=3):
        bad = bytearray(data)
        bad[pos] ^= 1 << bit
        path.write_bytes(bytes(bad))
        res = images.verify_image(path, [pub])
        assert res.verdict is not images.Verdict.VALID, (name, pos, bit)
        tried += 1
    assert tried == len(data)  # every byte of a small image


def test_bit_flips_through_the_cli(tmp_path, capsys, keydir, payload):
    out = build(capsys, keydir, payload, tmp_path / "a.ota")
    data = out.read_bytes()
    n = len(data)
    regions = {"header": (0, 56), "descriptor": (56, 102), "payload": (108, n - 78),
               "signature": (n - 78, n)}
    for name, pos, bit in flip_positions(data, regions, per_region=6, seed=4):
        bad = bytearray(data)
        bad[pos] ^= 1 << bit
        out.write_bytes(bytes(bad))
        code, stdout, err = run(capsys, "image", "verify", str(out), "--pubkey", str(keydir / "public.bin"))
        assert code == 1 and "invalid" in err and "valid:" not in stdout, (name, pos)


def test_every_command_has_its_own_help():
    from click.testing import CliRunner
    seen = set()
    for path in (["keys", "generate"], ["image", "build"], ["image", "inspect"], ["image", "verify"]):
        r = CliRunner().invoke(cli, [*path, "--help"])
        assert r.exit_code == 0
        assert r.output not in seen
        seen.add(r.output)


# ------------------------------------------------------------------ verify --for-device

def device_config(tmp_path, keydir, **over):
    """A device's hanota.json, as `hanota board deploy` writes it."""
    cfg = {"eui64": "00:11:22:33:44:55:66:77", "role": "ppmid", "manufacturer": 0x1234,
           "hw_version": 0x0100, "keys": [(keydir / "public.bin").read_bytes().hex()],
           "install_code": "83FED3407A939723A5C639B26916D505C3B5"}
    cfg.update(over)
    p = tmp_path / "hanota.json"
    p.write_text(json.dumps(cfg))
    return p


@pytest.mark.parametrize("build_extra,config,verify_extra,reason,words", [
    ((), {}, (), None, "the device 00:11:22:33:44:55:66:77 takes it"),
    (("--payload-kind", "romfs"), {}, ("--board", "vboard-nrf52840"), None, "takes it"),
    (("--manufacturer", "0x5678"), {}, (), "wrong-manufacturer",
     "manufacturer 0x5678; the device is 0x1234"),
    (("--image-type", "0x0099"), {}, (), "wrong-image-type", "image type 0x0099"),
    (("--min-hw", "0x0200", "--max-hw", "0x02ff"), {}, (), "hardware-version",
     "hardware 0x0200..0x02ff; the device is 0x0100"),
    (("--dest", "00:11:22:33:44:55:66:78"), {}, (), "wrong-destination",
     "for device 00:11:22:33:44:55:66:78; this one is 00:11:22:33:44:55:66:77"),
    (("--security-version", "2"), {}, ("--floor", "3"), "security-version",
     "security version 2 is below the device's anti-rollback floor 3"),
    (("--payload-kind", "romfs"), {}, ("--board", "vboard-esp32"), "wrong-payload-kind",
     "the payload is romfs; firmware banks take esp-app"),
    ((), {}, ("--running", "0x00020001"), "version-not-newer", "is not newer than the running"),
    ((), {"role": "hcalcs"}, (), "wrong-image-type", "the device takes 0x0086"),
    (("--board-family", "esp32s3"), {"family": "esp32"}, (), "wrong-board",
     "built for board family esp32s3; the device is esp32"),
    (("--board-family", "esp32s3", "--payload-kind", "esp-app"), {}, ("--board", "esp32"),
     "wrong-board", "built for board family esp32s3; the device is esp32"),
    (("--board-family", "esp32", "--payload-kind", "esp-app"), {"family": "esp32"},
     ("--board", "esp32"), None, "takes it"),
    (("--board-family", "any"), {"family": "nrf52840"}, (), None, "takes it"),
])
def test_verify_for_device_applies_the_devices_own_header_rules(
        tmp_path, capsys, keydir, payload, build_extra, config, verify_extra, reason, words):
    if "esp-app" in build_extra:  # `image build` checks an esp-app payload: a real app image
        payload = tmp_path / "app.bin"
        payload.write_bytes(small_app(build_extra[build_extra.index("--board-family") + 1]))
    out = build(capsys, keydir, payload, tmp_path / "a.ota", *build_extra)
    cfg = device_config(tmp_path, keydir, **config)
    code, stdout, err = run(capsys, "image", "verify", str(out), "--pubkey",
                            str(keydir / "public.bin"), "--for-device", str(cfg), *verify_extra)
    if reason is None:
        assert code == 0 and stdout.startswith("valid") and words in stdout, err
    else:
        assert code == 1 and not stdout
        assert "invalid (rejected by the device, %s)" % reason in err and words in err, err


def test_verify_for_device_too_big_for_the_bank(tmp_path, capsys, keydir):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(130 * 1024 + 1))  # the nrf52840 virtual board's app banks: 128 KiB
    out = build(capsys, keydir, big, tmp_path / "a.ota", "--payload-kind", "romfs")
    cfg = device_config(tmp_path, keydir)
    code, _, err = run(capsys, "image", "verify", str(out), "--pubkey", str(keydir / "public.bin"),
                       "--for-device", str(cfg), "--board", "vboard-nrf52840")
    assert code == 1 and "too-big" in err and "(133121 bytes) is larger than the bank (131072 bytes)" in err


def test_verify_for_device_checks_the_signature_first_and_refuses_a_bad_config(
        tmp_path, capsys, keydir, payload):
    other = tmp_path / "other"
    generate_keys(other)
    out = build(capsys, keydir, payload, tmp_path / "a.ota", "--manufacturer", "0x5678")
    cfg = device_config(tmp_path, keydir)
    code, _, err = run(capsys, "image", "verify", str(out), "--pubkey", str(other / "public.bin"),
                       "--for-device", str(cfg))
    assert code == 1 and "unknown-key" in err  # not trusted: nothing else is said about it
    bad = device_config(tmp_path, keydir, manufacturer="acme")
    code, _, err = run(capsys, "image", "verify", str(out), "--pubkey", str(keydir / "public.bin"),
                       "--for-device", str(bad))
    assert code != 0 and "manufacturer must be a 16-bit integer" in err
    code, _, err = run(capsys, "image", "verify", str(out), "--pubkey", str(keydir / "public.bin"),
                       "--running", "3")
    assert code != 0 and "go with --for-device" in err
