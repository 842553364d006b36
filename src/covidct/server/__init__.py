"""The ``covidct serve`` web page and REST API (FastAPI), built by ``create_app(settings)``."""
