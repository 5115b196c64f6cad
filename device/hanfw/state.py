# hanota device: small persistent state (resume point, held image, pending
# activation, anti-rollback floor on firmware banks, link counter reservation).
# One JSON file, replaced atomically (write a new file, then rename), so a
# power cut leaves either the old or the new state, never a mix.
# load_json/save_json are the device's one way to keep a JSON file (the roles'
# role.json uses them too).

import json
import os


def load_json(path):
    # a missing, unreadable or non-object file means "nothing kept": {}
    try:
        with open(path) as f:
            d = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def save_json(path, data):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(json.dumps(data))
    try:
        os.rename(tmp, path)
    except OSError:
        # some filesystems refuse to rename over a file: remove, then rename
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, path)


class State:
    def __init__(self, path):
        self.path = path
        self.data = {}
        self.load()

    def load(self):
        self.data = load_json(self.path)  # nothing kept means "nothing in progress"
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
        save_json(self.path, self.data)
