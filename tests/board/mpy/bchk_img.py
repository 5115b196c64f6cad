# On-board tier: the header rules a device applies before it writes anything (hanfw.imagecheck),
# on a file the host built and put on the board, against a configuration as deploy writes it.
import json
from hanfw import config, imagecheck, otafile
import bchk


def reason(buf, cfg_json, floor, bank_size, bank_kind):
    s = otafile.OtaStream(integrity=False)
    s.feed(memoryview(buf))
    s = s.finish()
    cfg = config.from_dict(json.loads(cfg_json))
    tag, n = s.elements[1][0], s.elements[1][1]  # the element after the descriptor
    bchk.out(imagecheck.reason(s.header, s.descriptor, tag, n, cfg, floor, bank_size, bank_kind))
