"""The service on a real 3-master Redis Cluster: every script stays on one slot thanks to the hash tags."""
from __future__ import annotations

from redis.cluster import RedisCluster

from shared.registration import sign_registration, sign_unregistration
from rendezvous.settings import Limits, Settings
from tests.servers import COOKIE_KEY, serve
from tests.helpers import new_key, peer_id


async def test_register_discover_page_delete_on_a_cluster(redis_cluster, key_prefix):
    url = f"redis://127.0.0.1:{redis_cluster[0].port}/0"
    settings = Settings(redis_url=url, redis_cluster=True, cookie_key=COOKIE_KEY, key_prefix=key_prefix,
                        limits=Limits(max_registrations_per_peer=6, rate_limit_ip_per_minute=10_000))
    namespaces = [f"ns-{i}" for i in range(6)]
    keys = [new_key() for _ in range(5)]
    async with serve(settings) as http:
        for namespace in namespaces:
            for key in keys[:3] if namespace != "ns-0" else keys:
                response = await http.post("/peers", data=sign_registration(key, namespace, [], 60))
                assert response.status == 201, await response.text()
        # ns-0 ... ns-5 land on different masters
        cluster = RedisCluster(host="127.0.0.1", port=redis_cluster[0].port)
        slots_used = {cluster.get_node_from_key(f"{key_prefix}:{{ns:{n}}}:exp").port for n in namespaces}
        assert len(slots_used) > 1
        ids, cookie = [], None
        while True:
            params = {"namespace": "ns-0", "limit": "2", **({"cookie": cookie} if cookie else {})}
            page = await (await http.get("/peers", params=params)).json()
            ids += [p["ID"] for p in page["Peers"]]
            cookie = page["Cookie"]
            if not page["More"]:
                break
        assert ids == [peer_id(k) for k in keys]
        # keys[0] is in all six namespaces: the per-peer cap, kept on the peer's slot, holds
        refused = await http.post("/peers", data=sign_registration(keys[0], "ns-6", [], 60))
        assert refused.status == 409 and (await refused.json())["error"] == "peer_registration_limit"
        gone = await http.delete(f"/peers/{peer_id(keys[0])}", data=sign_unregistration(keys[0]))
        assert sorted((await gone.json())["Removed"]) == namespaces
        for namespace in namespaces:
            response = await http.get(f"/peers/{peer_id(keys[0])}", params={"namespace": namespace})
            assert response.status == 404
        metrics = await (await http.get("/metrics")).text()
        assert 'rendezvous_live_peers{namespace="ns-0"} 4.0' in metrics
        cluster.close()
