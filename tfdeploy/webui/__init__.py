"""``tfdeploy ui``: a local web page that shows what a served model sees
(``tfdeploy.ui()`` starts it; this package is named apart from that function).

``app.py`` is the ASGI app (Starlette): it proxies a TF Serving REST endpoint (ours or
tensorflow_model_server: the page needs no CORS from it) through the client library, so
masks, signatures and errors are exactly what ``tfdeploy predict`` gets.  ``static/`` is
the page: plain HTML/CSS/JS shipped as package data (no build step, no CDN: it works on
an offline machine).
"""
