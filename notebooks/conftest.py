"""nbval settings for the notebooks.

The kernel nbval starts inherits this process's environment, so these variables reach the
notebooks: figures instead of widgets (no front end under pytest), and notebook 07's short
training run instead of the full one.
"""

import os

os.environ.setdefault("LLAMA_COURSE_STATIC", "1")
os.environ.setdefault("LLAMA_COURSE_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def pytest_collectstart(collector):
    # Widget views carry random model ids; nbval already skips them. HTML tables duplicate the
    # text/plain output of pandas, which *is* compared.
    if getattr(collector, "fspath", None) is not None and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("text/html",)
