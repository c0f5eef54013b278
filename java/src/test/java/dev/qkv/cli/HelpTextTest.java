package dev.qkv.cli;

import dev.qkv.attention.Backend;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * What {@code qkv <command> --help} says of {@code --backend} matches what the parser takes and what README says
 * ("`sdpa` and `mha` run `native` by default; their `--backend` also takes `auto` and `reference`"): the help of
 * sdpa named reference but not auto, and mha's named neither, nor its default.
 */
class HelpTextTest {

    @ParameterizedTest
    @ValueSource(strings = {"sdpa", "mha"})
    void helpNamesEveryBackendTheParserTakesAndTheDefault(String command) throws UsageException {
        MainTest.Result r = MainTest.run(command, "--help");
        assertEquals(0, r.code(), r.toString());
        for (Backend b : Backend.values()) {
            assertEquals(b, SdpaCommand.backend(b.cliName()), b.cliName()); // the parser sdpa and mha share
            assertTrue(r.out().contains(b.cliName()), command + " --help does not name backend " + b.cliName()
                    + ", which its --backend takes:\n" + r.out());
        }
        assertTrue(r.out().contains("Default backend native"), command + " --help does not give the default:\n"
                + r.out());
    }
}
