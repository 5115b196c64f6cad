"""The device's loss recovery pieces under CPython: the round-trip estimator (RFC 6298 in
integer milliseconds, hanfw/rtt.py) and the page's reorder buffer (hanfw/download.py)."""
import pytest

from hanfw import rtt
from hanfw.download import Download


def rfc6298(samples):
    """The RFC's estimator in floats: RTO after each sample (unclamped)."""
    srtt = var = None
    out = []
    for r in samples:
        if srtt is None:
            srtt, var = r, r / 2
        else:
            var = 0.75 * var + 0.25 * abs(srtt - r)
            srtt = 0.875 * srtt + 0.125 * r
        out.append(srtt + 4 * var)
    return out


def test_rto_follows_rfc_6298_within_rounding():
    samples = [180, 220, 150, 400, 170, 160, 165, 900, 175, 170, 168, 172] * 3
    r = rtt.Rtt(1500)
    for got_ms, want in zip(samples, rfc6298(samples)):
        r.sample(got_ms)
        assert abs(r.rto - max(rtt.RTO_MIN, want)) <= 3, (r.rto, want)


def test_rto_before_a_sample_is_the_configured_timeout_and_is_clamped_and_backs_off():
    r = rtt.Rtt(1500)
    assert r.rto == 1500  # nothing measured yet: block_timeout_ms
    r.sample(5)
    assert r.rto == rtt.RTO_MIN  # a fast link: never below the floor
    r.backoff()
    assert r.rto == 2 * rtt.RTO_MIN
    for _ in range(20):
        r.backoff()
    assert r.rto == 5 * 1500  # bounded
    r.sample(5)
    assert r.rto < 5 * 1500  # a new sample after the losses starts over from the estimate


def test_silence_inside_a_page_allows_for_the_gap_between_blocks():
    r = rtt.Rtt(1500)
    r.sample(30)
    for _ in range(30):
        r.arrival(400)  # a slow link: blocks 400 ms apart
    assert r.silence() >= r.rto + 2 * 380


def page(d, start, size, step):
    """Download d as the client leaves it after a page request at start."""
    d.offset, d.page_end, d.body = start, start + size, True
    return [(o, bytes([o // step % 256]) * min(step, start + size - o))
            for o in range(start, start + size, step)]


def test_blocks_after_a_lost_one_are_held_and_come_back_in_order():
    d = Download()
    d.start((1, 2, 3), 10_000)
    blocks = page(d, 1000, 1000, 50)
    d.step = 50
    lost = {2, 7, 19}  # the last block of the page (19) too
    for i, (o, data) in enumerate(blocks):
        if i in lost or i < 2:
            continue
        assert d.hold_block(o, data, 1000)
    d.offset = 1100  # blocks 0 and 1 were taken in order
    assert d.held == 20 - 2 - len(lost) and d.htop == 1950
    assert [o for o, _ in blocks if o < d.htop and not d.is_held(o) and o >= d.offset] == [1100, 1350]
    assert d.unhold() is None  # 1100 is missing: nothing to take yet
    d.offset = 1150  # 1100 came again and was taken
    got = []
    while (m := d.unhold()) is not None:
        got.append(bytes(m))
        d.offset += len(m)
    assert got == [blocks[i][1] for i in (3, 4, 5, 6)] and d.offset == 1350


def test_what_cannot_be_held_is_refused():
    d = Download()
    d.start((1, 2, 3), 10_000)
    page(d, 0, 1000, 50)
    assert not d.hold_block(0, b"x" * 50, 1000)  # the one awaited: not for the hold
    assert not d.hold_block(950, b"x" * 50, 1000)  # no block length known from a page's last
    d.step = 50
    assert not d.hold_block(975, b"x" * 50, 1000)  # past the page
    assert not d.hold_block(130, b"x" * 50, 1000)  # not on a block boundary
    assert not d.hold_block(600, b"x" * 50, 500)  # past the hold
    assert not d.hold_block(100, b"x" * 50, 0)  # no hold
    assert d.hold_block(100, b"x" * 50, 500) and d.hold_block(100, b"x" * 50, 500)
    assert d.held == 1  # the same block twice is held once
    d.drop_held()
    assert d.held == 0 and not d.is_held(100)


@pytest.mark.parametrize("value", [-2, "1k", 1.5])
def test_config_refuses_a_bad_reorder(value):
    from hanfw import config
    from test_roles_and_boards import cfg_dict
    assert config.from_dict(cfg_dict()).reorder == -1  # the default: the page, one block a frame
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(cfg_dict(reorder=value))
    assert e.value.reason == "bad-reorder" and "reorder" in str(e.value)


def test_the_emulated_link_loses_seeded_random_frames_both_ways():
    from hanota.vboard.linkrelay import UdpRelay

    with pytest.raises(ValueError, match="drop_rate"):
        UdpRelay(("127.0.0.1", 9), drop_rate=1.5)
    runs = []
    for _ in range(2):
        r = UdpRelay(("127.0.0.1", 9), drop_rate=0.1, drop_seed=15)
        try:
            runs.append([r._lose("up" if i % 2 else "down") for i in range(2000)])
        finally:
            r.stop()
        assert r.lost == sum(runs[-1]) == r.lost_by["up"] + r.lost_by["down"]
        assert r.lost_by["up"] > 0 and r.lost_by["down"] > 0
    assert runs[0] == runs[1]  # the same seed loses the same frames
    assert 140 <= sum(runs[0]) <= 260  # about 10 % of 2000


def test_a_new_transfer_forgets_what_a_cut_short_one_held():
    d = Download()
    d.start((1, 2, 3), 10_000)
    page(d, 0, 1000, 50)
    d.step = 50
    assert d.hold_block(200, b"a" * 50, 1000) and d.held == 1
    d.start((1, 2, 4), 10_000)  # the download was suspended mid-page; a new one begins
    page(d, 0, 1000, 50)
    d.step = 50
    assert not d.is_held(200)
    assert d.hold_block(300, b"b" * 50, 1000)
    d.offset = 200
    assert d.unhold() is None  # 200 is not held in this transfer
