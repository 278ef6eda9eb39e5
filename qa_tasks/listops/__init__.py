"""ListOps at long range: `lra`, with a Transformer or a Fourier Transformer.

    dataset.py   ListOps expressions: the LRA generator, LRA's and the original file formats
    fourier.py   the Transformer classifier and the Fourier Transformer (DCT shortening)
    lra.py       the task (and `python -m qa_tasks.listops.lra`, the single-process loop)
"""
