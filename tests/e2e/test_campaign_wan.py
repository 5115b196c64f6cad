"""A campaign end to end: the DCC's HTTP server and WAN, a real Comms Hub (`Hub` with its WAN
client) and fake HAN devices; the campaign driver that `hanota dcc serve` runs
(`campaign.CampaignThread`, its own database connection, holding Supplier A's key as
`dcc serve --supplier-key` does) sends each PPMID its own signed SR 11.4, wave after wave,
and the campaign ends with every device activated once."""
from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner

from hanota import images
from hanota.cli import cli
from hanota.dcc import campaign
from support.dccworld import World, msb, run

pytestmark = pytest.mark.timeout(120)


def test_campaign_through_the_wan_to_devices(tmp_path):
    async def body(w: World):
        await w.start_hub()
        devs = []
        for n in (1, 2, 3):
            await w.prenotify(n)
            devs.append(await w.device(n))
        data = w.image("ppmid", 0x00000002)
        s = campaign.create(
            w.store, name="spring", key_pem=(w.pki_dir / "supplier-a.xml.key.pem").read_bytes(),
            cert_pem=(w.pki_dir / "supplier-a.xml.cert.pem").read_bytes(), image=data,
            model=(images.DEFAULT_MANUFACTURER, images.ROLE_IMAGE_TYPES["ppmid"]),
            from_version="00000001", waves=["1", "100%"], success_threshold="100%")
        assert [x["size"] for x in s["waves_detail"]] == [1, 2]
        signer = campaign.Signer.from_files(str(w.pki_dir / "supplier-a.xml.key.pem"),
                                            str(w.pki_dir / "supplier-a.xml.cert.pem"))
        driver = campaign.CampaignThread(w.dcc, signers=[signer], worker="w1",
                                         poll=0.05).start()
        try:
            await w.until(lambda: campaign.status(w.store, "spring", devices=False)["state"]
                          == "done", "the campaign done", timeout=60)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, driver.stop)
        s = campaign.status(w.store, "spring")
        assert [(x["ok"], x["failed"]) for x in s["waves_detail"]] == [(1, 0), (2, 0)]
        assert [d["outcome"] for d in s["devices"]] == ["activated"] * 3
        assert [d.activated_versions for d in devs] == [[2], [2], [2]]
        # each device had one DUIS request, answered with its one signed final response
        for d in s["devices"]:
            assert len(d["requests"]) == 1
            resp = await w.wait_response(d["requests"][0])
            assert resp["code"] == "I0"
            assert resp["body"]["CommsHubOutcome"]["Outcome"] == "activated"
        assert s["devices"][0]["device"] == msb(1).hex().upper()
        # the report shows it
        r = CliRunner().invoke(cli, ["campaign", "status", "spring", "--db", str(w.store.path)])
        assert r.exit_code == 0 and "wave 2: 2 devices, 2 successful" in r.output, r.output
    run(tmp_path, body)
