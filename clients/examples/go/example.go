package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
)

var client = &http.Client{Transport: &http.Transport{
	DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", os.Getenv("SIDKEYD_SOCKET"))
	},
}}

func post(path string, request map[string]any) map[string]any {
	body, _ := json.Marshal(request)
	response, err := client.Post("http://localhost"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	defer response.Body.Close()
	var answer map[string]any
	if err := json.NewDecoder(response.Body).Decode(&answer); err != nil || response.StatusCode != 200 {
		panic(fmt.Sprint(response.Status, answer, err))
	}
	return answer
}

func main() {
	signed := post("/v1/sign", map[string]any{"environment": "sandbox"})
	verified := post("/v1/verify", map[string]any{"environment": "sandbox",
		"timestamp": signed["timestamp"], "signature": signed["signature"]})
	out, _ := json.Marshal(map[string]any{"signed": signed, "verified": verified})
	fmt.Println(string(out))
}
