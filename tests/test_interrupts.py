from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from memchat.interrupts import deferred_interrupt


def test_ctrl_c_waits_for_the_end_of_the_block_then_interrupts():
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        done.append(True)
    assert done
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_the_block_just_runs():
    # signal.signal raises there; Ctrl-C never reaches such a thread anyway.
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with deferred_interrupt():
                pass
        except BaseException as error:  # noqa: BLE001 (any error is the failure)
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []
