"""`gmix-train` that kills itself with SIGKILL in the middle of an epoch.

    python tests/helpers/sigkill_mid_epoch.py EPOCH BATCH [gmix-train flags]

Runs `gmix-train`'s own entry point with one extra callback, which sends
SIGKILL to its own process after batch BATCH (0-based) of epoch EPOCH: no
Python cleanup, no `finally`, exactly what the OOM killer or a preempted
machine does. Used by tests/test_reliability.py.
"""

import os
import signal
import sys

import keras

from keras_gmix import cli, train


class SigkillAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.kill_epoch, self.kill_batch, self.epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.kill_epoch and batch == self.kill_batch:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    kill = SigkillAt(int(sys.argv[1]), int(sys.argv[2]))
    run = train.run
    train.run = lambda config, callbacks=None: run(config, callbacks=[kill] + list(callbacks or []))
    cli.train_main(sys.argv[3:])
    sys.exit("sigkill_mid_epoch: the run ended before the kill")


if __name__ == "__main__":
    main()
