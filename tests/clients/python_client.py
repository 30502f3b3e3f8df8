"""atlassian-python-api (PyPI) through wikigate, with the library's default headers.

Run by scripts/clients against `wikigate demo`: GATEWAY is the gateway's origin, METRICS its
/metrics URL. The library names some user-API operations (current user, user by account id);
the others go through its own generic get/post/put/delete, as its users call them.
"""

import os
import re
import sys

from atlassian import Confluence

GATEWAY = os.environ["GATEWAY"]
METRICS = os.environ["METRICS"]
ALICE = "712020:a11ce000-0000-4000-8000-000000000001"
BOB = "712020:b0b00000-0000-4000-8000-000000000002"

confluence = Confluence(url=GATEWAY + "/wiki", username="alice@example.com", password="alice-api-token")
session = confluence._session


def metric(name, **labels):
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in session.get(METRICS).text.splitlines():
        match = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def check(condition, message):
    if not condition:
        sys.exit(f"python client: {message}")


def reads():
    """Every read, memberof paged to the end by following base + next."""
    me = confluence.get_current_user()
    check(me["accountId"] == ALICE, f"current user: {me}")
    bob = confluence.get_user_details_by_accountid(BOB, expand="operations")
    check(bob["displayName"] == "Bob Builder", f"user: {bob}")
    groups = []
    page = confluence.get("rest/api/user/memberof", params={"accountId": ALICE, "limit": 1})
    while True:
        groups += [g["name"] for g in page["results"]]
        if "next" not in page["_links"]:
            break
        url = page["_links"]["base"] + page["_links"]["next"]
        check(url.startswith(GATEWAY), f"paging left the gateway: {url}")
        page = confluence.get(url, absolute=True)
    check(groups == ["confluence-users", "confluence-administrators", "site-admins"], f"memberof: {groups}")
    bulk = confluence.get("rest/api/user/bulk", params={"accountId": f"{ALICE},{BOB}"})
    check([u["accountId"] for u in bulk["results"]] == [ALICE, BOB], f"bulk: {bulk}")
    emails = confluence.get("rest/api/user/email/bulk", params={"accountId": f"{BOB},{ALICE}"})
    check([e["email"] for e in emails] == ["bob@example.com", "alice@example.com"], f"email bulk: {emails}")


check(session.headers.get("Accept-Encoding", "").startswith("gzip"), "the library asks for gzip by default")
reads()
upstream = metric("wikigate_upstream_requests_total")
hits = metric("wikigate_requests_total", cache="hit")
reads()
check(metric("wikigate_upstream_requests_total") == upstream, "repeated reads went upstream")
check(metric("wikigate_requests_total", cache="hit") >= hits + 7, "repeated reads were not hits")

watch = "rest/api/user/watch/space/PYCLIENT"
check(confluence.get(watch)["watching"] is False, "not watching at first")
confluence.post(watch)
check(confluence.get(watch)["watching"] is True, "watching after adding the watch")
confluence.delete(watch)
check(confluence.get(watch)["watching"] is False, "not watching after removing it")

prop = f"rest/api/user/{ALICE}/property/python-client"
confluence.post(prop, data={"value": {"theme": "dark"}})
check(confluence.get(prop)["value"] == {"theme": "dark"}, "property created")
confluence.put(prop, data={"value": {"theme": "light"}})
check(confluence.get(prop)["value"] == {"theme": "light"}, "property updated, read back fresh")
keys = [p["key"] for p in confluence.get(f"rest/api/user/{ALICE}/property")["results"]]
check("python-client" in keys, f"property listed: {keys}")
confluence.delete(prop)
missing = session.get(f"{GATEWAY}/wiki/{prop}", auth=("alice@example.com", "alice-api-token"))
check(missing.status_code == 404, f"property deleted: {missing.status_code}")
check(not session.cookies, f"no cookie reached the client: {session.cookies}")
print("python client (atlassian-python-api): ok")
