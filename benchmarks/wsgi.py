"""The app gunicorn serves in the server benchmarks: the variant named by ``BENCH_VARIANT``."""

from benchmarks.variants import wsgi_app_from_env

app = wsgi_app_from_env()
