from setuptools import find_packages, setup

setup(
    name="bayesnas",
    version="0.1.0",
    description="BASE: Bayesian meta-network architecture search, as a Pyro program",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks"]),
    package_data={"bayesnas.data": ["embedded/*.h5"]},
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=[
        # A range that the CPU build on this machine (2.13.0) satisfies: pip then
        # installs nothing more. See README for the CUDA install.
        "torch>=2.1,<2.15",
        "pyro-ppl>=1.8",
        "numpy>=1.23",
        "h5py>=3.6",
        "click>=8.0",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "pillow>=9.0",
    ],
    extras_require={
        # the tests read TensorBoard event files back, so they need the optional extra too
        "test": ["pytest>=7", "tensorboard>=2.10"],
        "tensorboard": ["tensorboard>=2.10"],
        "notebook": ["pandas>=1.5"],
        # the peers benchmarks/bench_fit.py times against (Conv-4 second-order MAML)
        "bench": ["higher>=0.2", "torchopt>=0.7"],
    },
    entry_points={"console_scripts": ["bayesnas=bayesnas.cli.main:main"]},
)
