// An independent HL7 v2 client peer for the tests: HAPI HL7v2's own MLLP client (ActiveConnection, Initiator)
// sends each message file over ONE connection, in order, and prints each ACK's segments one a line, then "----".
//
//   java -cp <classes>:<hapi jars> HapiSend HOST PORT [--tls CA.pem] [--charset NAME] [--timeout SECONDS] FILE...
//   (or java -cp <hapi jars> HapiSend.java ..., the single-file launcher, ~1 s slower per run)
//
// Each file holds one message in --charset (default UTF-8); segments may end in \r, \n or \r\n and go out
// ended by \r, the last one too, as HAPI's own encoder does. HAPI writes each message in the charset its MSH-18
// names (8859/1 -> ISO-8859-1, UNICODE UTF-8 -> UTF-8; --charset when MSH-18 is empty) and reads ACKs the same
// way. The text is otherwise sent verbatim: HAPI parses it only to learn MSH-10, which its Initiator matches
// against the ACK's MSA-2, so messages the gateway should refuse (unknown trigger, missing PID-3) go out exactly
// as written. Exit 1 with the reason on stderr on a refused connection, a failed TLS handshake or a timeout.

import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.HL7Exception;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.app.Connection;
import ca.uhn.hl7v2.app.Initiator;
import ca.uhn.hl7v2.llp.MinLowerLayerProtocol;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.parser.GenericModelClassFactory;
import ca.uhn.hl7v2.parser.PipeParser;
import ca.uhn.hl7v2.util.StandardSocketFactory;
import ca.uhn.hl7v2.validation.impl.ValidationContextFactory;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.PrintStream;
import java.net.Socket;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public class HapiSend {

    /**
     * Parses typed where HAPI can (it falls back to GenericMessage itself for an unknown trigger such as ADT^A99;
     * this parser's fallback covers the rest, e.g. an unknown version) and remembers each text, so that encode
     * sends it back verbatim and the ACK can be printed as received.
     */
    static class VerbatimParser extends PipeParser {
        final Map<Message, String> texts = new IdentityHashMap<>();
        final PipeParser generic;

        VerbatimParser(HapiContext ctx) {
            super(ctx);
            generic = new PipeParser(new GenericModelClassFactory());
            generic.setValidationContext(ValidationContextFactory.noValidation());
            generic.getParserConfiguration().setAllowUnknownVersions(true);
        }

        @Override
        public Message parse(String text) throws HL7Exception {
            Message message;
            try {
                message = super.parse(text);
            } catch (HL7Exception typedFailed) {
                message = generic.parse(text);
            }
            texts.put(message, text);
            return message;
        }

        @Override
        public String encode(Message message) throws HL7Exception {
            String text = texts.get(message);
            return text != null ? text : super.encode(message);
        }
    }

    /** TLS sockets that trust only the given PEM CA(s) and check the server's name, as a careful sender would. */
    static class PemTrustSocketFactory extends StandardSocketFactory {
        final SSLContext ssl;

        PemTrustSocketFactory(Path caPem) throws Exception {
            KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
            store.load(null, null);
            try (InputStream in = Files.newInputStream(caPem)) {
                int i = 0;
                for (Certificate cert : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                    store.setCertificateEntry("ca" + i++, cert);
                }
            }
            TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            trust.init(store);
            ssl = SSLContext.getInstance("TLS");
            ssl.init(null, trust.getTrustManagers(), null);
        }

        @Override
        public Socket createTlsSocket() throws java.io.IOException {
            SSLSocket socket = (SSLSocket) ssl.getSocketFactory().createSocket();
            SSLParameters params = socket.getSSLParameters();
            params.setEndpointIdentificationAlgorithm("HTTPS");
            socket.setSSLParameters(params);
            return socket;
        }
    }

    @SuppressWarnings("deprecation")  // getConnectionHub: newClient would use the context's own, re-encoding parser
    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        if (args.length < 3) {
            fail("usage: HapiSend HOST PORT [--tls CA.pem] [--charset NAME] [--timeout SECONDS] FILE...");
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Path caPem = null;
        Charset charset = StandardCharsets.UTF_8;
        long timeoutMillis = 30_000;
        List<String> messages = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            switch (args[i]) {
                case "--tls" -> caPem = Path.of(args[++i]);
                case "--charset" -> charset = Charset.forName(args[++i]);
                case "--timeout" -> timeoutMillis = (long) (Double.parseDouble(args[++i]) * 1000);
                default -> {
                    String text = Files.readString(Path.of(args[i]), charset).replace("\r\n", "\r").replace('\n', '\r');
                    messages.add(text.endsWith("\r") ? text : text + "\r");
                }
            }
        }
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);

        HapiContext ctx = new DefaultHapiContext();
        ctx.setValidationContext(ValidationContextFactory.noValidation());
        // respectMSH18: the writer encodes (and the reader decodes) in MSH-18's charset; setCharset is the fallback.
        MinLowerLayerProtocol llp = new MinLowerLayerProtocol(true);
        llp.setCharset(charset);
        ctx.setLowerLayerProtocol(llp);
        if (caPem != null) {
            ctx.setSocketFactory(new PemTrustSocketFactory(caPem));
        }
        VerbatimParser parser = new VerbatimParser(ctx);
        watchdog(timeoutMillis, host + ":" + port);
        int exit = 0;
        try {
            Connection connection = ctx.getConnectionHub().attach(
                    host, port, parser, llp, caPem != null, ctx.getSocketFactory());
            Initiator initiator = connection.getInitiator();
            initiator.setTimeout(timeoutMillis, TimeUnit.MILLISECONDS);
            for (String text : messages) {
                deadline = System.currentTimeMillis() + timeoutMillis + 2000;
                Message ack = initiator.sendAndReceive(parser.parse(text));
                for (String segment : parser.texts.get(ack).split("\r")) {
                    if (!segment.isEmpty()) {
                        out.println(segment);
                    }
                }
                out.println("----");
            }
            connection.close();
        } catch (Exception error) {
            System.err.println("HapiSend: " + host + ":" + port + ": " + error);
            for (Throwable cause = error.getCause(); cause != null; cause = cause.getCause()) {
                System.err.println("  caused by: " + cause);
            }
            exit = 1;
        }
        ctx.close();
        System.exit(exit);  // HAPI's executor threads would otherwise keep the JVM alive
    }

    static volatile long deadline;

    /** The Initiator's timeout covers only the wait for an ACK; this covers a connect or TLS handshake that hangs. */
    static void watchdog(long timeoutMillis, String peer) {
        deadline = System.currentTimeMillis() + timeoutMillis + 2000;
        Thread thread = new Thread(() -> {
            while (System.currentTimeMillis() < deadline) {
                try {
                    Thread.sleep(100);
                } catch (InterruptedException stop) {
                    return;
                }
            }
            System.err.println("HapiSend: " + peer + ": no progress within " + timeoutMillis + " ms (connect, TLS or ACK)");
            Runtime.getRuntime().halt(1);
        });
        thread.setDaemon(true);
        thread.start();
    }

    static void fail(String why) {
        System.err.println(why);
        System.exit(2);
    }
}
