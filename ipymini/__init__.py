"ipymini: a small, fast Jupyter kernel for Python that drives IPython."
__version__ = "0.1.0"
