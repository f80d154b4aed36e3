"""Bad sites, made from outside fedcmr: Python imports this module at start-up in every
process whose PYTHONPATH holds this folder (tests/test_resilience.py sets it for a whole
federation). In ClientApp processes (and in fedcmr's SuperExec, which forks them), a site
named in FEDCMR_TEST_POISON trains as usual and then spoils its update, one attack per round:
"Charlie=nan,extra;Bravo=n_k,none" spoils Charlie's rounds 1 and 2 and Bravo's round 1.
fedcmr itself has no hook for it.

Attacks: nan (NaN in the first floating-point tensor), extra (a tensor the model lacks),
n_k (more training frames than any site has), round (a reply to another round), norm (the
local change multiplied by 1000), stall (an honest reply, sent after $FEDCMR_TEST_STALL_S
seconds: a straggler), none."""

import os
import sys

PLAN = {site: attacks.split(",") for site, _, attacks in
        (part.partition("=") for part in os.environ.get("FEDCMR_TEST_POISON", "").split(";"))
        if attacks}


def spoil(reply, attack: str, received):
    import torch
    from flwr.app import ArrayRecord

    weights = reply.arrays.to_torch_state_dict()
    if attack == "nan":
        first = next(k for k, v in weights.items() if v.is_floating_point())
        weights[first] = torch.full_like(weights[first], float("nan"))
    elif attack == "extra":
        weights["extra.weight"] = torch.zeros(3)
    elif attack == "norm":
        weights = {k: received[k] + 1000 * (v - received[k]) if v.is_floating_point() else v
                   for k, v in weights.items()}
    elif attack == "n_k":
        return reply.model_copy(update={"num_examples": 10**6})
    elif attack == "round":
        return reply.model_copy(update={"server_round": reply.server_round + 5})
    elif attack == "stall":
        import time

        time.sleep(float(os.environ["FEDCMR_TEST_STALL_S"]))
        return reply
    else:
        return reply
    return reply.model_copy(update={"arrays": ArrayRecord(weights)})


def runs_clientapps() -> bool:
    """Flower's own ClientApp process, or fedcmr's SuperExec (client/runtime/superexec_main.py),
    whose forked children are the ClientApps and inherit what is patched here."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name == "flwr-clientapp" or (name == "-c" and sys.argv[1:2] == ["flower-superexec"])


if PLAN and runs_clientapps():
    from fedcmr.client.site import work as site_work

    honest = site_work.train

    def train(site, order, state):
        reply = honest(site, order, state)
        attacks = PLAN.get(site.name, [])
        if order.server_round > len(attacks):
            return reply
        return spoil(reply, attacks[order.server_round - 1], state)

    site_work.train = train
