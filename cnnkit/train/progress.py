"""The per-epoch progress bar: batches done, running loss and images per second."""

import sys
import time

POSTFIX_EVERY = 10  # steps between postfix updates: reading the loss synchronizes the device


def format_duration(seconds):
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """enabled=False (--no-progress) turns the bar off; it is also off where nobody sees it."""

    def __init__(self, total, initial, description, enabled=True):
        self.bar = None
        self.steps = 0
        self.images = 0
        self.started = time.perf_counter()
        if enabled:
            from tqdm.auto import tqdm

            # A console bar redraws itself with \r: into a log file or a pipe that is every
            # redraw (30 KB an epoch), so it is drawn on a terminal only. In Jupyter,
            # tqdm.auto picks a widget, which writes no text and is always drawn.
            widget = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)
            if widget or sys.stderr.isatty():
                self.bar = tqdm(total=total, initial=initial, desc=description, unit="batch",
                                leave=False, dynamic_ncols=True, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.bar is not None:
            self.bar.close()

    def advance(self, images, meter, decode_rate=None):
        """decode_rate: images/s the data loader's workers decode (None: nothing to decode);
        below the training rate, decoding is the bottleneck."""
        self.steps += 1
        self.images += images
        if self.bar is None:
            return
        self.bar.update(1)
        if self.steps % POSTFIX_EVERY == 0:
            rate = self.images / max(time.perf_counter() - self.started, 1e-9)
            loss = meter.state[0].item() / max(meter.count, 1)
            data = "" if decode_rate is None else f", data {decode_rate:.0f} img/s"
            self.bar.set_postfix_str(f"loss {loss:.4f}, train {rate:.0f} img/s{data}",
                                     refresh=False)

    @staticmethod
    def write(line):
        """Print a line without breaking an active bar."""
        try:
            from tqdm.auto import tqdm
        except ImportError:
            print(line, flush=True)
            return
        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
