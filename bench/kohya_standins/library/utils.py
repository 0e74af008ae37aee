import logging


def setup_logging(*args, **kwargs):
    logging.basicConfig(level=logging.WARNING)
