"""The explorer in the browser: ``lficam-app <checkpoint | run folder | sweep folder>`` (``pip install 'lficam[app]'``).

:mod:`lficam.app.explorer` computes what the page shows (over :mod:`lficam.evaluation`), :mod:`lficam.app.page`
lays it out with Streamlit, :mod:`lficam.app.launch` starts the server.
"""
