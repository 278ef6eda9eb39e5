from setuptools import Extension, find_packages, setup

# The update rules' single-pass kernels (algorithms/_kernels.c): plain C, with an AVX2 path chosen
# at run time. -ffp-contract=off: the compiler fuses no multiply-add of its own, so the AVX2 and
# plain paths do the same float operations (Note [two paths, one result] there).
KERNELS = Extension("algorithms._kernels", ["algorithms/_kernels.c"],
                    depends=["algorithms/_kernels_body.h"],
                    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno"])

setup(
    name="gadei",
    version="0.1.0",
    description="Shared-memory parameter server with exactly-once, deadlock-free updates",
    python_requires=">=3.11",
    package_data={"gadei.serve": ["static/*"]},
    ext_modules=[KERNELS],
    packages=find_packages(include=["gadei", "gadei.*", "algorithms", "algorithms.*",
                                    "qa_tasks", "qa_tasks.*", "bench", "bench.*"]),
    install_requires=[
        # pinned: an unpinned torch pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel on disk
        "torch==2.13.0",
        "numpy>=1.26",
        "msgpack>=1.0",
        "atomics>=1.0.3",
        "mpi4py>=4.0",
        "mpich>=4.2",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "jiwer>=3.0",
        "scipy>=1.11",
        # word2vec for the qa towers (qa_tasks/answer_selection/word2vec.py); 4.4 is the first with numpy 2 wheels
        "gensim>=4.4,<5",
        # gadei serve (gadei/serve): the HTTP API, its server, and multipart uploads
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart>=0.0.9",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5,<4", "hypothesis>=6.100",
                 "selenium>=4.11", "requests>=2.28"],
    },
    entry_points={
        "console_scripts": ["gadei = gadei.cli:main"],
        # tasks by name (gadei/task.py); a third-party package registers its own the same way
        "gadei.tasks": [
            "probe = gadei.probe:Probe",
            "qc = qa_tasks.text_classification.qc:QC",
            "nlc = qa_tasks.text_classification.nlc:NLC",
            "qa = qa_tasks.answer_selection.qa:QA",
            "asr = qa_tasks.speech.asr:ASR",
            "lra = qa_tasks.listops.lra:LRA",
            "csv_text = qa_tasks.text_classification.csv_text:CsvText",
        ],
    },
)
