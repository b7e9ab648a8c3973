"""Shared test settings."""

import signal

import pytest
import torch

# the signals whose handling the tests check (fit, fit_maxent and the study runner stop on them as on Ctrl-C)
_STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]


@pytest.fixture(autouse=True, scope="session")
def default_signal_handlers():
    """The tests send themselves SIGINT, SIGTERM and SIGHUP and expect what a user at a terminal gets. A process
    started in the background by a shell without job control (`pytest &` in a script, some CI runners) inherits
    SIGINT ignored, and one started under nohup SIGHUP ignored; the library rightly leaves an ignored signal alone,
    so there those tests would see nothing. Give the test session the default handlers, and restore what it had."""
    previous = {}
    for number in _STOP_SIGNALS:
        if signal.getsignal(number) == signal.SIG_IGN:
            default = signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
            previous[number] = signal.signal(number, default)
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


@pytest.fixture(autouse=True)
def one_thread():
    # the test models are tiny: intra-op threads gain nothing, and two threads on a busy 2-core machine are slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
