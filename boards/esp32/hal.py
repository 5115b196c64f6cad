# hanota board support: ESP32 (firmware banks through esp32.Partition with the
# ESP-IDF bootloader's rollback; link to the hub over Wi-Fi + UDP).
FS_ROOT = "/"
BANK_KIND = "firmware"


def banks(state):
    import esp32
    from hanfw.banks import FirmwareBanks
    return FirmwareBanks(esp32, state)


# Join Wi-Fi with the credentials in hanota.json ("wifi": {"ssid", "key"}), then
# talk UDP to "hub": "udp:HOST:PORT". Waits at most 20 s for the network.
def link(cfg):
    import network
    import time
    from hanfw.transport import open_spec
    if not cfg.wifi or not cfg.hub:
        raise OSError(22, "hanota.json needs wifi {ssid, key} and hub udp:HOST:PORT on this board")
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    if not sta.isconnected():
        sta.connect(cfg.wifi["ssid"], cfg.wifi.get("key", ""))
        t0 = time.ticks_ms()
        while not sta.isconnected():
            if time.ticks_diff(time.ticks_ms(), t0) > 20000:
                raise OSError(110, "Wi-Fi %r did not connect within 20 s" % cfg.wifi["ssid"])
            time.sleep_ms(100)
    return open_spec(cfg.hub)


def reset():
    import machine
    machine.reset()
