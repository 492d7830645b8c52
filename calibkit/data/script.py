"""Polygraphy-style loader scripts: ``file.py:load_data`` yielding ``{input_name: ndarray}``.

The function (default name ``load_data``) is called afresh for every pass. The fingerprint
hashes the script's source; what it reads from elsewhere is hashed while streaming.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

from calibkit.data.base import Feed, IterableSource, hash_files
from calibkit.data.usercode import HardExit, no_hard_exit
from calibkit.errors import CalibkitError


def load_function(spec: str, default: str = "load_data"):
    """``path.py[:name]`` -> the callable; CalibkitError naming the file or function."""
    path_s, _, func = spec.partition(".py:")
    path = Path(path_s + ".py") if func else Path(spec)
    func = func or default
    if not path.is_file():
        raise CalibkitError(f"script {path} not found")
    mod_spec = importlib.util.spec_from_file_location(f"calibkit_user_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        with no_hard_exit(f"script {path}"):
            mod_spec.loader.exec_module(module)
    except CalibkitError:
        raise
    except (SystemExit, HardExit) as exc:
        call = "os._exit" if isinstance(exc, HardExit) else "sys.exit"
        raise CalibkitError(
            f"script {path} called {call}({exc.code!r}) while being imported; a script defines functions, it must not exit"
        ) from None
    except Exception as exc:
        raise CalibkitError(f"script {path} failed to import: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise CalibkitError(f"script {path} defines no function {func!r}; name it as {path}:FUNCTION")
    return path, fn


_END = object()


class ScriptSource(IterableSource):
    rehashable = True  # calling the loader again yields the same data: reuse can check it

    def __init__(self, spec: str) -> None:
        self.path, fn = load_function(spec)
        super().__init__(fn, description=f"loader script {spec}")

    def batches(self) -> Iterator[Feed]:
        import os

        cwd = os.getcwd()
        it = super().batches()
        try:
            while True:
                with no_hard_exit(self.description):
                    feed = next(it, _END)
                if feed is _END:
                    break
                self._same_directory(cwd)
                if not isinstance(feed, dict):
                    raise CalibkitError(
                        f"{self.description} yielded {type(feed).__name__}; yield {{input_name: ndarray}} dicts"
                    )
                yield feed
            self._same_directory(cwd)
        except CalibkitError:
            raise
        except (SystemExit, HardExit) as exc:
            call = "os._exit" if isinstance(exc, HardExit) else "sys.exit"
            raise CalibkitError(
                f"{self.description} called {call}({exc.code!r}); a loader yields {{input_name: ndarray}} dicts "
                "and returns when the data ends, it must not exit"
            ) from None
        except Exception as exc:
            raise CalibkitError(f"{self.description} raised {type(exc).__name__}: {exc}") from None

    def _same_directory(self, cwd: str) -> None:
        """A loader that changes the working directory would move every relative path of the
        run (its outputs among them): put it back and refuse."""
        import os

        now = os.getcwd()
        if now != cwd:
            os.chdir(cwd)
            raise CalibkitError(
                f"{self.description} changed the working directory to {now}; a loader must not chdir "
                "(relative output paths would land there): open files by absolute path instead"
            )

    def fingerprint(self) -> str | None:
        return None  # the script may read anything: streamed data is hashed instead

    def source_hash(self) -> str:
        return hash_files([self.path])
