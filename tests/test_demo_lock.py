"""Commands started together generate the demo set once, never under each other."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dsgl_cli.data import demo
from dsgl_cli.data.demo import store


def test_concurrent_first_use_generates_once(tmp_path: Path, monkeypatch):
    root = tmp_path / "demo"
    calls: list[int] = []
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def fake_generate(path: Path, seed: int = 0, progress=None):
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            calls.append(seed)
        time.sleep(0.3)
        path.mkdir(parents=True, exist_ok=True)
        (path / "done").write_text("ok")
        with lock:
            active["now"] -= 1
        return store.DemoSummary(root=path, counts={}, num_train_ids=1, num_test_ids=1, num_cameras=2,
                                     num_distractors=0, num_junk=0, seed=seed, height=128, width=64, seconds=0.3)

    monkeypatch.setattr(store, "generate_demo", fake_generate)
    monkeypatch.setattr(store, "demo_is_complete", lambda path, seed=None: (path / "done").exists())
    threads = [threading.Thread(target=demo.ensure_demo, args=(root,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [0]
    assert active["max"] == 1
