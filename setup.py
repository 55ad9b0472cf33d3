"""Packaging for keras_gmix.

TensorFlow is an extra, not a hard requirement, because it comes in two
wheels that install the same module: `tensorflow-cpu` (small, CPU only) and
`tensorflow` (with CUDA support). Pick one with `pip install -e ".[cpu]"` or
`pip install -e ".[gpu]"`.
"""

from setuptools import find_packages, setup

TF_VERSION = "2.21.0"

setup(
    name="keras_gmix",
    version="0.1.0",
    description="G-Mix (Mixup + Sharpness-Aware Minimization) for Keras 3 model.fit",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_gmix", "keras_gmix.*"]),
    # The console scripts' launcher: sets KERAS_BACKEND from --backend before
    # anything imports Keras (which `import keras_gmix` does).
    py_modules=["gmix_launch"],
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.15,<3.16",
        "numpy",
        "scikit-learn",  # the digits data set of the default job
        "tensorflow-datasets",  # CIFAR-10/100, SVHN, STL-10 loaders
        # tensorflow-datasets 4.9.10 imports importlib_resources in
        # core/dataset_builder.py (DatasetBuilder.code_path, reached by
        # url_infos when it reads the download checksums) but declares it
        # only for Python < 3.9, so a fresh install fails every download
        # with ModuleNotFoundError. tests/test_tfds_download.py covers it.
        "importlib_resources",
        "matplotlib",  # plots: comparison bar charts, loss landscapes
        "pyyaml",  # recipe config files
        "tensorboard",  # fit's TensorBoard logs (tensorflow-cpu does not pull it in)
    ],
    extras_require={
        "cpu": [f"tensorflow-cpu=={TF_VERSION}"],
        "gpu": [f"tensorflow[and-cuda]=={TF_VERSION}"],
        # JAX, Keras 3's other backend (KERAS_BACKEND=jax). 0.10 is the newest
        # JAX for Python 3.11 (0.12 needs 3.12); checked with Keras 3.15.1.
        "jax": ["jax[cpu]>=0.10,<0.11"],
        # ruff: .ci/run's lint; pytest-xdist: the tests on both cores.
        "test": ["pytest>=8", "pytest-timeout", "pytest-xdist", "ruff>=0.17,<0.18"],
        # tf-keras pulls in the full `tensorflow` wheel: benchmarks only.
        "bench": ["tf-keras==2.21.0", "mnist1d", "psutil", "scipy"],
    },
    entry_points={
        "console_scripts": [
            "gmix-train=gmix_launch:train",
            "gmix-compare=gmix_launch:compare",
            "gmix-flatness=gmix_launch:flatness",
        ],
    },
)
