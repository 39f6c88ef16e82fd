// The reference HL7 v2 receiver for benchmarks/hl7.py: HAPI HL7v2's own MLLP server (HapiContext.newServer,
// a SimpleServer: one connection thread each, original mode) with one application that answers every message
// with message.generateACK() (AA). Nothing is stored, logged or made durable: the ceiling of a Java HL7 stack
// that parses each message into HAPI's typed model and encodes an ACK.
//
//   java -cp <classes>:<hapi jars> HapiAck PORT
//
// Prints "READY <port>" once listening; runs until killed (SIGTERM). Validation is off (as HapiSend's), so
// the typed parse is HAPI's ordinary one without its rule checks.

import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.HL7Exception;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.app.HL7Service;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.protocol.ReceivingApplication;
import ca.uhn.hl7v2.validation.impl.ValidationContextFactory;

import java.io.IOException;
import java.util.Map;

public class HapiAck {

    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        if (args.length != 1) {
            System.err.println("usage: HapiAck PORT");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        HapiContext ctx = new DefaultHapiContext();
        ctx.setValidationContext(ValidationContextFactory.noValidation());
        HL7Service server = ctx.newServer(port, false);
        server.registerApplication(new ReceivingApplication<Message>() {
            @Override
            public Message processMessage(Message message, Map<String, Object> metadata) throws HL7Exception {
                try {
                    return message.generateACK();
                } catch (IOException error) {
                    throw new HL7Exception(error);
                }
            }

            @Override
            public boolean canProcess(Message message) {
                return true;
            }
        });
        server.startAndWait();
        System.out.println("READY " + port);
        System.out.flush();
        Thread.currentThread().join();
    }
}
