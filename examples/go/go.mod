module example.com/agent-access-proxy/examples/go

go 1.19
