"""Secrets Manager change events as EventBridge delivers them to SQS, and what they name."""

from __future__ import annotations

import json
import re
from typing import Any, Final

# Secrets Manager API calls (CloudTrail ``eventName``) after which a secret's value or staging
# labels may differ. Reads are deliberately absent: a GetSecretValue event must never force a
# GetSecretValue (with CloudTrail data events on, that would loop).
CHANGE_EVENTS: Final = frozenset(
    {
        "PutSecretValue",
        "UpdateSecret",
        "UpdateSecretVersionStage",
        "RotationSucceeded",
        "DeleteSecret",
        "RestoreSecret",
    }
)
_ARN = re.compile(r"^(arn:[^:]+:secretsmanager:[^:]*:[^:]*):secret:(.+)$")
_ARN_SUFFIX = re.compile(r"-[A-Za-z0-9]{6}$")


def parse_change_event(body: str) -> tuple[str, str | None]:
    """``(event name, secret id)`` of a Secrets Manager event as EventBridge delivers it to SQS.

    The body is the EventBridge event, or an SNS notification whose ``Message`` is (SNS to SQS
    without raw delivery). The secret is CloudTrail's ``requestParameters.secretId``, or
    ``additionalEventData.SecretId`` for ``RotationSucceeded``. It is ``None`` for an event
    that changes no key: another service, a call not in ``CHANGE_EVENTS``, or a call that
    failed (CloudTrail's ``errorCode``). Raises ``ValueError`` for anything else; the
    message never quotes the body.
    """
    event = _json_object(body, "body")
    if event.get("Type") == "Notification" and isinstance(event.get("Message"), str):
        event = _json_object(event["Message"], "SNS Message")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise ValueError("not an EventBridge event: no detail object")
    event_name = detail.get("eventName")
    if not isinstance(event_name, str):
        raise ValueError("not a CloudTrail event: no detail.eventName")
    source = event.get("source")
    if source not in (None, "aws.secretsmanager") or event_name not in CHANGE_EVENTS:
        return event_name, None
    if detail.get("errorCode") is not None:
        return event_name, None
    for container, field in (
        ("requestParameters", "secretId"),
        ("additionalEventData", "SecretId"),
    ):
        holder = detail.get(container)
        if isinstance(holder, dict) and isinstance(holder.get(field), str) and holder[field]:
            return event_name, str(holder[field])
    raise ValueError(f"{event_name} event names no secret")


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def secret_matches(secret: str, changed: str) -> bool:
    """Whether an event about ``changed`` concerns the configured ``secret``.

    Either may be a name, a partial ARN or a full ARN (whose name ends in ``-`` and six
    random characters). Two ARNs must also agree on partition, region and account. A
    doubtful match errs towards yes: it costs one forced check, a miss costs a rotation
    noticed only on schedule.
    """
    if secret == changed:
        return True
    secret_prefix, secret_names = _secret_names(secret)
    changed_prefix, changed_names = _secret_names(changed)
    if None not in (secret_prefix, changed_prefix) and secret_prefix != changed_prefix:
        return False
    return not secret_names.isdisjoint(changed_names)


def _secret_names(secret: str) -> tuple[str | None, frozenset[str]]:
    """``(ARN prefix or None, the names it may stand for)`` of a secret name or ARN.

    An ARN's last part may end in Secrets Manager's ``-`` and six random characters (full ARN)
    or not (partial ARN); both readings are kept.
    """
    arn = _ARN.match(secret)
    if arn is None:
        return None, frozenset({secret})
    prefix, name = arn.groups()
    return prefix, frozenset({name, _ARN_SUFFIX.sub("", name)})
