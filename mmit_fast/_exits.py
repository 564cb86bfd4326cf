"""The exit codes and error lines shared by every verb (``mmit <verb>`` and
``python -m mmit_fast.train``): one place, so that both entry points behave alike.

0 success; 2 bad input or usage (a missing or malformed file, a bad config or flag value, a
refused checkpoint or resume: any ``ValueError`` / ``FileNotFoundError``, or
``SystemExit("one line")``); 1 an unexpected failure (any other exception, e.g. a diverged
training run); 130 interrupted. Errors are one line on stderr; ``MMIT_DEBUG=1`` re-raises them
with the traceback."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable


def run_verb(verb: str, func: Callable[[Any], Any], args: Any) -> int:
    """``func(args)`` -> its exit code, every error mapped to one line and a code (module doc)."""
    debug = bool(os.environ.get("MMIT_DEBUG"))
    try:
        rc = func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        if isinstance(e.code, str) and not debug:
            print(e.code, file=sys.stderr)
            return 2
        raise
    except (FileNotFoundError, ValueError) as e:
        # bad input: the message names the file or sample
        if debug:
            raise
        print(f"mmit {verb}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional module missing: name the extra that brings it (_extras.py)
        from ._extras import extra_for

        missing = extra_for(e)
        if missing is None or debug:
            raise
        print(f"mmit {verb}: {missing}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"mmit {verb}: failed: {type(e).__name__}: {first} (MMIT_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    return int(rc or 0)
