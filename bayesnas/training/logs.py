"""Where a training session's log lines go: ``RUN/log.txt``, and the console beside the progress bar.

Every module logs through ``logging.getLogger(__name__)``, under the ``bayesnas`` logger;
the package itself installs no handler (a library leaves that to its user). A session of
``fit`` or ``retrain`` adds two handlers to the ``bayesnas`` logger for its duration
(:func:`session_log`): one appending to ``RUN/log.txt`` (a resumed run adds to the same
file) and, when progress is shown, one writing through ``tqdm.write`` so that the lines
do not break the bar (``--quiet`` turns both the bar and these lines off; ``log.txt`` is
written either way). Under torchrun only rank 0 speaks: the other ranks' records below
ERROR are not emitted during the session.

Usage::

    import logging
    logging.basicConfig(level=logging.INFO)   # also see the lines in your own handlers
    fit(FitConfig(iterations=20), out="runs/demo", progress=False)
"""
import contextlib
import logging
import sys
from typing import Iterator, List, Optional

from tqdm.auto import tqdm

#: the package's logger: every module's logger is a child of it
LOGGER_NAME = "bayesnas"
#: the session log in a run folder
LOG_FILE = "log.txt"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TqdmHandler(logging.Handler):
    """Write records with ``tqdm.write`` (to stderr), which clears and redraws the progress bars around them.

    INFO lines are written as they are; warnings and errors start with their level ("warning: ...").
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            tqdm.write(text, file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def session_log(log_path: Optional[str], console: bool = True, rank: int = 0) -> Iterator[logging.Logger]:
    """Route the ``bayesnas`` logger's INFO and above for one session; undo it on exit, however the block ends.

    Args:
        log_path: the file to append to (``RUN/log.txt``; None on ranks other than 0, which write no files).
        console: also print the lines on stderr through ``tqdm.write`` (what ``progress`` turns on).
        rank: the process's rank; any other than 0 emits nothing below ERROR.

    Yields:
        the ``bayesnas`` logger.
    """
    logger = logging.getLogger(LOGGER_NAME)
    handlers: List[logging.Handler] = []
    if rank == 0 and log_path is not None:
        to_file = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        to_file.setFormatter(logging.Formatter(_FORMAT))
        handlers.append(to_file)
    if rank == 0 and console:
        handlers.append(TqdmHandler())
    level = logger.level
    for handler in handlers:
        handler.setLevel(logging.INFO)
        logger.addHandler(handler)
    # the package's modules log through child loggers, which take this level as theirs
    if rank != 0:
        logger.setLevel(logging.ERROR)
    elif handlers and (level == logging.NOTSET or level > logging.INFO):
        logger.setLevel(logging.INFO)
    try:
        yield logger
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
