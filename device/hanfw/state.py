# hanota device: small persistent state (resume point, held image, pending
# activation, anti-rollback floor on firmware banks, link counter reservation).
# One JSON file, replaced atomically (write a new file, then rename), so a
# power cut leaves either the old or the new state, never a mix.

import json
import os


class State:
    def __init__(self, path):
        self.path = path
        self.data = {}
        self.load()

    def load(self):
        try:
            with open(self.path) as f:
                self.data = json.loads(f.read())
        except (OSError, ValueError):
            self.data = {}  # a missing or unreadable state means "nothing in progress"
        if not isinstance(self.data, dict):
            self.data = {}
        return self.data

    def get(self, key, default=None):
        return self.data.get(key, default)

    def update(self, **kv):
        changed = False
        for k, v in kv.items():
            if v is None:
                if k in self.data:
                    del self.data[k]
                    changed = True
            elif self.data.get(k) != v:
                self.data[k] = v
                changed = True
        if changed:
            self.save()

    def save(self):
        tmp = self.path + ".new"
        with open(tmp, "w") as f:
            f.write(json.dumps(self.data))
        try:
            os.rename(tmp, self.path)
        except OSError:
            # some filesystems refuse to rename over a file: remove, then rename
            try:
                os.remove(self.path)
            except OSError:
                pass
            os.rename(tmp, self.path)
