"""``edgeship-device agent`` and ``edgeship-device feedback``: the long-running agent and the
command that talks to it, thin over :mod:`runtime.agent` and :mod:`runtime.api.client`.

Heavy modules are imported inside the commands, so other commands start as fast as before.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import click

from runtime.cli import _store, emit, home_option, json_option
from runtime.errors import UsageError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _addresses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    from runtime.api.settings import parse_address

    try:
        return tuple(parse_address(v) for v in values)
    except UsageError as e:
        raise click.BadParameter(str(e)) from e


_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option(
    "--serve",
    multiple=True,
    metavar="HOST:PORT|unix:PATH",
    callback=_addresses,
    help="Serve the local inference API (Open Inference Protocol, docs/local-api.md) here; "
    "repeatable. A bare PORT means 127.0.0.1:PORT.",
)
@click.option(
    "--inbox",
    type=click.Path(file_okay=False, path_type=Path),
    help="Install every complete bundle that appears in this folder.",
)
@click.option("--broker", metavar="mqtt[s]://HOST:PORT", help="Send telemetry to this broker.")
@click.option("--fleet", help="Fleet name in telemetry topics (with --broker).")
@click.option("--device-id", help="This device's id in telemetry topics (with --broker).")
@click.option(
    "--telemetry-interval",
    type=click.FloatRange(min=0.05),
    default=10.0,
    show_default=True,
    help="Seconds per telemetry window.",
)
@click.option("--mqtt-username", help="Broker user name.")
@click.option(
    "--mqtt-password-file",
    type=_file,
    help="File whose first line is the broker password (else $EDGESHIP_MQTT_PASSWORD).",
)
@click.option("--ca", type=_file, help="CA certificate that signed the broker's (mqtts).")
@click.option("--cert", type=_file, help="Client certificate (mqtts).")
@click.option("--key", type=_file, help="Client certificate's private key (mqtts).")
@click.option("--prefix", default="edgeship/v1", show_default=True, help="Topic prefix.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="What the agent logs to standard error.",
)
@home_option
def agent(
    serve: tuple[Any, ...],
    inbox: Optional[Path],
    broker: Optional[str],
    fleet: Optional[str],
    device_id: Optional[str],
    telemetry_interval: float,
    mqtt_username: Optional[str],
    mqtt_password_file: Optional[Path],
    ca: Optional[Path],
    cert: Optional[Path],
    key: Optional[Path],
    prefix: str,
    log_level: str,
    home: Optional[Path],
) -> None:
    """Run the device agent until SIGTERM or SIGINT: the local API (--serve), the bundle inbox
    (--inbox) and telemetry (--broker). It logs to standard error and describes itself in
    HOME/agent.json while it runs."""
    import logging

    from runtime.agent import AgentSettings, run_agent

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    store = _store(home)
    telemetry = None
    if broker is not None:
        if not fleet or not device_id:
            raise UsageError("--broker needs --fleet and --device-id")
        from runtime.telemetry.settings import TelemetrySettings

        telemetry = TelemetrySettings.from_options(
            broker=broker,
            fleet=fleet,
            device_id=device_id,
            home=store.home,
            interval_s=telemetry_interval,
            prefix=prefix,
            username=mqtt_username,
            password_file=mqtt_password_file,
            ca=ca,
            cert=cert,
            key=key,
        )
    elif fleet or device_id or mqtt_username or mqtt_password_file or ca or cert or key:
        raise UsageError("--fleet, --device-id and the MQTT options need --broker")
    if not serve and inbox is None and broker is None:
        raise UsageError("nothing to run: give --serve, --inbox and/or --broker")
    settings = AgentSettings(serve=serve, inbox=inbox, telemetry=telemetry)
    run_agent(store, settings)


def _label(text: str) -> Any:
    """A label as typed: an int or a float when it reads as one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


@click.command()
@click.argument("name")
@click.option("--id", "prediction_id", required=True, help="The prediction_id being corrected.")
@click.option(
    "--label",
    "labels",
    required=True,
    multiple=True,
    help="The true value; repeat it once per row of that prediction, in order.",
)
@home_option
@json_option
def feedback(
    name: str, prediction_id: str, labels: tuple[str, ...], home: Optional[Path], as_json: bool
) -> None:
    """Tell the running agent the true label of an earlier prediction of model NAME (for
    online accuracy in telemetry). Needs an agent serving the local API (exit 7 otherwise)."""
    from runtime.agent_state import running_agent
    from runtime.api.client import ApiClient

    store = _store(home)
    address = running_agent(store.home).api_address()
    with ApiClient(address, timeout_s=10.0) as client:
        answer = client.feedback(name, prediction_id, [_label(v) for v in labels])
    emit(
        answer,
        as_json,
        lambda d: click.echo(
            f"feedback for {d['model_name']} {d['model_version']} prediction {d['id']}: "
            f"{d['accepted']} value(s) recorded"
        ),
    )


def agent_summary(home: Path) -> Optional[dict[str, Any]]:
    """The running agent and its counters since start, for ``status``; None when none runs."""
    from runtime.agent_state import read_state

    state = read_state(home)
    if state is None:
        return None
    return {
        "pid": state.pid,
        "started": state.doc.get("started"),
        "serve": list(state.serve),
        "counters": state.counters.get("models", {}),
    }
