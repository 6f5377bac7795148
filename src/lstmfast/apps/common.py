"""What the apps (the demo, the text model, the benchmark) share: progress bars, thread
limits, command-line argument checks. Not part of lstmfast's API."""
import argparse
import contextlib
import os
import sys

from ..threads import thread_limit


class _PlainBar:
    """The part of tqdm's interface the demos use, printing nothing but ``write`` lines."""

    def update(self, n=1):
        pass

    def set_description(self, desc):
        pass

    def set_postfix_str(self, s):
        pass

    def write(self, line, log=print):
        log(line)


class _TqdmBar:
    def __init__(self, bar):
        self._bar = bar
        self.update = bar.update

    # Without refresh=False every call would redraw the bar, once per training step.
    def set_description(self, desc):
        self._bar.set_description(desc, refresh=False)

    def set_postfix_str(self, s):
        self._bar.set_postfix_str(s, refresh=False)

    def write(self, line, log=print):
        if log is print:
            self._bar.write(line, file=sys.stdout)
        else:
            log(line)


@contextlib.contextmanager
def progress_bar(total, desc, unit, enabled=True, bar_format=None):
    """A tqdm bar on stderr if tqdm is installed and stderr is a terminal, else no bar."""
    tqdm = None
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
    if tqdm is None:
        yield _PlainBar()
        return
    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
               bar_format=bar_format)
    try:
        yield _TqdmBar(bar)
    finally:
        bar.close()


@contextlib.contextmanager
def limit_threads(n):
    """Run the block with lstmfast and the BLAS pools limited to ``n`` threads.

    Sets ``lstmfast.set_num_threads(n)``; numpy's own BLAS (used by Linear, the losses and
    clipping) is limited through threadpoolctl when it is installed. Measured here on two
    busy cores, an idle-spinning BLAS pool next to lstmfast's threads made a training step
    3-4x slower, and for the small shapes of these demos one thread is the fastest
    setting anyway. A fixed thread count also makes a seeded run repeat bit for bit.
    Yields a short description for the log.
    """
    with thread_limit(n):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield (f"{n} thread{'s' * (n > 1)} (numpy's BLAS not limited: "
                   f"threadpoolctl is not installed)")
            return
        with threadpool_limits(limits=n, user_api="blas"):
            yield f"{n} thread{'s' * (n > 1)}"


def cannot_write(path):
    """Why no file can be written at path, or None: for outputs that a long run writes at
    its end, checked before it starts."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return f"{path}: cannot write there (not a file in a writable folder)"
    return None


def positive(kind):
    def parse(text):
        v = kind(text)
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse
