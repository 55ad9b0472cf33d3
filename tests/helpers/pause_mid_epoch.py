"""`gmix-train` that stops in the middle of an epoch and waits to be killed.

    python tests/helpers/pause_mid_epoch.py EPOCH BATCH [gmix-train flags]

Runs `gmix-train`'s own entry point with one extra callback which, after
batch BATCH (0-based) of epoch EPOCH, prints "paused" and sleeps: a run in
progress, holding its run folder, for as long as a test needs one. Used by
tests/test_reliability.py.
"""

import sys
import time

import keras

from keras_gmix import cli, train


class PauseAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.pause_epoch, self.pause_batch, self.epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.pause_epoch and batch == self.pause_batch:
            print("paused", flush=True)
            time.sleep(3600)


def main():
    pause = PauseAt(int(sys.argv[1]), int(sys.argv[2]))
    run = train.run
    train.run = lambda config, callbacks=None: run(
        config, callbacks=[pause] + list(callbacks or [])
    )
    cli.train_main(sys.argv[3:])
    sys.exit("pause_mid_epoch: the run ended before the pause")


if __name__ == "__main__":
    main()
