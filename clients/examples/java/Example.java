import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.regex.Pattern;

public class Example {
    static String post(String path, String json) throws IOException {
        var address = UnixDomainSocketAddress.of(System.getenv("SIDKEYD_SOCKET"));
        try (var channel = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            channel.connect(address);
            byte[] body = json.getBytes(StandardCharsets.UTF_8);
            String head = "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                + "Content-Type: application/json\r\nContent-Length: " + body.length + "\r\n\r\n";
            channel.write(ByteBuffer.wrap(head.getBytes(StandardCharsets.US_ASCII)));
            channel.write(ByteBuffer.wrap(body));
            var received = new ByteArrayOutputStream();
            var buffer = ByteBuffer.allocate(4096);
            while (channel.read(buffer.clear()) > 0) received.write(buffer.array(), 0, buffer.position());
            String response = received.toString(StandardCharsets.UTF_8);
            if (!response.startsWith("HTTP/1.1 200 ")) throw new IOException(response);
            return response.substring(response.indexOf("\r\n\r\n") + 4);
        }
    }

    static String field(String json, String name) {
        var match = Pattern.compile("\"" + name + "\": \"([^\"]*)\"").matcher(json);
        if (!match.find()) throw new IllegalStateException("no " + name + " in " + json);
        return match.group(1);
    }

    public static void main(String[] args) throws IOException {
        String signed = post("/v1/sign", "{\"environment\": \"sandbox\"}");
        String verified = post("/v1/verify", String.format(
            "{\"environment\": \"sandbox\", \"timestamp\": \"%s\", \"signature\": \"%s\"}",
            field(signed, "timestamp"), field(signed, "signature")));
        System.out.println("{\"signed\": " + signed + ", \"verified\": " + verified + "}");
    }
}
