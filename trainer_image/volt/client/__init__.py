"""The volt client: submit, follow and manage TrainingJobs from Python or the ``volt`` command.

    from volt.client import JobSettings, VoltClient

    client = VoltClient(namespace="team-a")          # the user's kubeconfig
    name = client.submit(JobSettings(command=["python", "-m", "volt.examples.synthetic"],
                                     nodes=2, devices="2", max_epochs=1))
    for line in client.follow_rank(name, rank=0):
        print(line)
    outcome = client.wait(name, timeout=3600)        # a JobStatus; outcome.succeeded

Needs the ``kubernetes`` package (``pip install 'volt[client]'``); see docs/cli.md.
"""
from volt.client.api import ClientError, InvalidJob, JobNotFound, VoltClient
from volt.client.results import (
    Condition, Event, Failure, JobDescription, JobStatus, PodInfo, TERMINAL_PHASES,
)
from volt.client.spec import DEFAULT_IMAGE, JobSettings, SpecError, build_manifest

__all__ = [
    "ClientError", "Condition", "DEFAULT_IMAGE", "Event", "Failure", "InvalidJob",
    "JobDescription", "JobNotFound", "JobSettings", "JobStatus", "PodInfo", "SpecError",
    "TERMINAL_PHASES", "VoltClient", "build_manifest",
]
