"""The AWS Secrets Manager source (``type = "aws"``), in modules along its seams.

``source`` (reads, region fallback), ``client`` (session, assume-role, clients), ``errors``
(the tables and their translation), ``notify`` (the SQS watcher) and ``events`` (what a change
event names). The public names are re-exported here.
"""

from sidkeyd.sources.aws.errors import (
    BOTOCORE_ERRORS,
    DELIBERATELY_UNMAPPED,
    ERROR_CODES,
    translate_error,
)
from sidkeyd.sources.aws.events import CHANGE_EVENTS, parse_change_event
from sidkeyd.sources.aws.notify import NOTIFY_BATCH, NOTIFY_WAIT_S
from sidkeyd.sources.aws.source import DEFAULT_VERSION_STAGE, AwsSource

__all__ = [
    "BOTOCORE_ERRORS",
    "CHANGE_EVENTS",
    "DEFAULT_VERSION_STAGE",
    "DELIBERATELY_UNMAPPED",
    "ERROR_CODES",
    "NOTIFY_BATCH",
    "NOTIFY_WAIT_S",
    "AwsSource",
    "parse_change_event",
    "translate_error",
]
