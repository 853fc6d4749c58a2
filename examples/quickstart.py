"""Quickstart: CBAM in your own Keras model.

A small CNN with a CBAM block, trained with XLA (`jit_compile=True`) on
scikit-learn's digits (shipped with scikit-learn, no download), saved as
`.keras`, reloaded with `safe_mode=True` and no `custom_objects`, and checked.

    python examples/quickstart.py [--epochs 8] [--fast] [--out DIR]
"""

import time

from _shared import build_model, compile_model, digits_for, parse_arguments, save_and_reload

from keras_attention.backend import BACKEND, IS_LEGACY, keras


def main(argv=None):
    args = parse_arguments(__doc__, argv, epochs=12)

    (x_train, y_train), (x_test, y_test), epochs = digits_for(args)
    keras.utils.set_random_seed(0)
    model = compile_model(build_model(), 2e-3, jit_compile=True)  # the CNN: examples/_shared.py
    mode = "tf_keras" if IS_LEGACY else f"Keras {keras.__version__} on {BACKEND}"
    print(f"Training {model.name} ({model.count_params():,} parameters) with XLA, {mode}")
    start = time.time()
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, validation_data=(x_test, y_test), verbose=2)
    print(f"trained in {time.time() - start:.1f}s")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)

    print(f"test accuracy: {accuracy:.4f}")
    if not save_and_reload(model, x_test, args.out):
        raise SystemExit("reloaded model differs")
    return accuracy


if __name__ == "__main__":
    main()
