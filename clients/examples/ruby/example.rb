require "json"
require "net/http"
require "socket"

# Net::HTTP with its connection made on the Unix socket instead of TCP.
class SidkeydHTTP < Net::HTTP
  def connect
    @socket = Net::BufferedIO.new(UNIXSocket.new(ENV.fetch("SIDKEYD_SOCKET")))
  end
end

def post(path, request)
  response = SidkeydHTTP.new("localhost").post(path, request.to_json, "Content-Type" => "application/json")
  raise "#{response.code} #{response.body}" unless response.code == "200"
  JSON.parse(response.body)
end

signed = post("/v1/sign", { environment: "sandbox" })
verified = post("/v1/verify", { environment: "sandbox",
                                timestamp: signed["timestamp"], signature: signed["signature"] })
puts({ signed: signed, verified: verified }.to_json)
