package dev.qkv.config;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** {@link Settings} on a property of the test's own: unset, valid, out of range and not a number at all. */
class SettingsTest {
    private static final String NAME = "qkv.test.settingsTest";

    @AfterEach
    void clear() {
        System.clearProperty(NAME);
    }

    @Test
    void unsetGivesTheFallback() {
        assertEquals(7, Settings.longSetting(NAME, 7, 1, 10));
        assertEquals(7, Settings.intSetting(NAME, 7, 1, 10));
        assertNull(Settings.booleanSetting(NAME));
        assertFalse(Settings.isSet(NAME));
    }

    @Test
    void aValueInRangeIsTakenWithSpacesAroundIt() {
        System.setProperty(NAME, " 10 ");
        assertEquals(10, Settings.longSetting(NAME, 7, 1, 10));
        System.setProperty(NAME, "1");
        assertEquals(1, Settings.intSetting(NAME, 7, 1, 10));
        assertTrue(Settings.isSet(NAME));
    }

    @Test
    void anythingElseIsRefusedNamingTheSetting() {
        for (String bad : new String[] {"0", "11", "-1", "abc", "1e3", "0x5", "5k", "", "9223372036854775808",
                "\u0663"}) {
            System.setProperty(NAME, bad);
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> Settings.longSetting(NAME, 7, 1, 10), bad);
            assertEquals("-D" + NAME + "=" + bad + ": must be an integer from 1 to 10", e.getMessage());
        }
    }

    @Test
    void booleansAreTrueOrFalseOnly() {
        System.setProperty(NAME, "TRUE");
        assertEquals(Boolean.TRUE, Settings.booleanSetting(NAME));
        System.setProperty(NAME, "false");
        assertEquals(Boolean.FALSE, Settings.booleanSetting(NAME));
        for (String bad : new String[] {"yes", "1", "", "flase"}) {
            System.setProperty(NAME, bad);
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> Settings.booleanSetting(NAME), bad);
            assertEquals("-D" + NAME + "=" + bad + ": must be true or false", e.getMessage());
        }
    }
}
