# hanota device: the link's round-trip time, measured as a transfer runs, and the wait
# before a request counts as lost (RFC 6298's estimator in integer milliseconds).
#
#   first sample R:  SRTT = R, RTTVAR = R / 2
#   then:            RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|,  SRTT = 7/8 SRTT + 1/8 R
#   RTO = SRTT + 4 RTTVAR, clamped to [lo, hi]; each loss doubles it (up to hi) until a new
#   sample comes (samples only from requests sent once: Karn's rule, kept by the caller).
#
# SRTT is kept times 8 and RTTVAR times 4 (the kernel's scaled form), so every step is an
# integer shift or add: no floats and no allocation per sample. The same object smooths the
# gap between the blocks of a page as they arrive (`gap`, times 8), which tells how long a
# silence inside a page means a lost block rather than a slow one.

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

RTO_MIN = const(100)  # ms: a loaded host or a busy hub answers late, not lost


class Rtt:
    def __init__(self, initial_ms, lo=RTO_MIN, hi=0):
        self.lo = lo
        self.hi = hi or max(lo, 5 * initial_ms)
        self.initial = max(lo, min(int(initial_ms), self.hi))
        self.reset()

    def reset(self):
        # no sample yet: the configured timeout until the link has been measured
        self.srtt = 0  # ms * 8 (0: no sample)
        self.var = 0  # ms * 4
        self.gap8 = 0  # ms * 8 between blocks of a page (0: none measured)
        self.rto = self.initial
        self.samples = 0

    def sample(self, ms):
        # one round trip: a request (sent once) to the first block that answered it
        if ms < 0:
            return
        if self.srtt == 0:
            self.srtt = max(1, ms) << 3
            self.var = ms << 1
        else:
            err = ms - (self.srtt >> 3)
            self.srtt += err
            if self.srtt < 8:
                self.srtt = 8
            if err < 0:
                err = -err
            self.var += err - (self.var >> 2)
        self.samples += 1
        self._set((self.srtt >> 3) + self.var)

    def arrival(self, ms):
        # the gap since the block before it, within one page (EWMA, 1/8)
        if ms < 0:
            return
        if self.gap8 == 0:
            self.gap8 = max(1, ms) << 3
        else:
            self.gap8 += ms - (self.gap8 >> 3)
            if self.gap8 < 8:
                self.gap8 = 8

    def backoff(self):
        # a request went unanswered: wait twice as long for the next (RFC 6298 5.5)
        self._set(self.rto << 1)

    def _set(self, ms):
        self.rto = self.lo if ms < self.lo else (self.hi if ms > self.hi else ms)

    def silence(self):
        # inside a page: how long without a block means the rest is not coming
        return self.rto + (self.gap8 >> 2)  # RTO + 2 gaps
