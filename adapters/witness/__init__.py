"""The quorum witness (issue 15): etcd through its v3 HTTP gateway (``etcd``), the gateway
client with its time budget (``gateway``) and the status records shared in etcd
(``status``)."""
