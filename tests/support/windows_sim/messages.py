"""Display-language texts of the emulated tools.

en-US texts follow real output as printed by Windows (see README.md for the
sources). The de-DE texts marked UNCONFIRMED below are the simulator's best
rendering: no captured German output of these exact commands was found, so
plugins must never depend on any label (the contract says: take numbers by
position, use exit codes). XML (wevtutil) and the CSV of the cmdlet pipelines are
not translated; PowerShell's own parser/cmdlet messages are translated on a
German system.
"""

from __future__ import annotations

TEXTS = {
    "en-US": {
        # netsh interface ipv4 show dynamicportrange (KB929851 shows the command;
        # the layout is what Windows prints, as quoted in many public reports,
        # e.g. dorssel/usbipd-win#53).
        "dyn_title": "Protocol {proto} Dynamic Port Range",
        "dyn_dashes": "---------------------------------",
        # Labels without padding: tools.py pads them to the profile's width
        # (16 columns on most builds, 18 on build 26200).
        "dyn_start": "Start Port",
        "dyn_num": "Number of Ports",
        # netsh interface ipv4 show excludedportrange (docker/for-win#3171 and
        # many public captures).
        "excl_title": "Protocol {proto} Port Exclusion Ranges",
        "excl_header": "Start Port    End Port",
        "excl_dashes": "----------    --------",
        "excl_footer": "* - Administered port exclusions.",
        "ok": "Ok.",
        # Win32 ERROR_INVALID_PARAMETER (87) text, which netsh prints for values it
        # rejects (learn.microsoft.com "System Error Codes (0-499)").
        "param_incorrect": "The parameter is incorrect.",
        "param_missing": "One or more essential parameters were not entered.\r\nVerify the required parameters, and reenter them.",
        "cmd_not_found": "The following command was not found: {cmd}.",
        # add excludedportrange over an existing exclusion or a port in use (Win32
        # ERROR_SHARING_VIOLATION, 32, as users report it: docker/for-win#3171,
        # microsoft/WSL#5306); delete of a range that is not an administered
        # exclusion: ERROR_NOT_FOUND (1168) (UNCONFIRMED for netsh).
        "in_use": "The process cannot access the file because it is being used by another process.",
        "not_found": "Element not found.",
        # reg.exe (learn.microsoft.com windows-commands "reg query", "reg add",
        # "reg delete"); ERROR_SUCCESS text.
        "reg_ok": "The operation completed successfully.",
        "reg_not_found": "ERROR: The system was unable to find the specified registry key or value.",
        "reg_invalid_syntax": 'ERROR: Invalid syntax.\r\nType "REG {verb} /?" for usage.',
        "reg_invalid_key": 'ERROR: Invalid key name.\r\nType "REG {verb} /?" for usage.',
        "reg_overwrite": "Value {name} exists, overwrite(Yes/No)? ",
        "reg_delete_confirm": "Delete the registry value {name} (Yes/No)? ",
        "reg_canceled": "The operation was canceled by the user.",
        # Windows PowerShell 5.1 CommandNotFoundException message.
        "ps_not_recognized": (
            "The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable "
            "program. Check the spelling of the name, or if a path was included, verify that the path is correct "
            "and try again."
        ),
        "ps_missing_terminator": "The string is missing the terminator: {quote}.",
        # cmd.exe, for a command line that is not PowerShell.
        "cmd_not_recognized": "'{name}' is not recognized as an internal or external command,\r\noperable program or batch file.",
    },
    "de-DE": {
        # UNCONFIRMED: German show dynamicportrange labels and "OK." (no captured German
        # output of them found); the excludedportrange title, header and footer are captured.
        "dyn_title": "Protokoll {proto} Dynamischer Portbereich",
        "dyn_dashes": "---------------------------------",
        "dyn_start": "Startport",
        "dyn_num": "Anzahl der Ports",
        # Captured German output (README "Layouts"): the title quotes the protocol,
        # the header has six spaces between the words.
        "excl_title": 'Portausschlussbereiche für das Protokoll "{proto}"',
        "excl_header": "Startport      Endport",
        "excl_dashes": "----------    --------",
        "excl_footer": "* - Verwaltete Portausschlüsse.",
        "ok": "OK.",
        # Win32 error 87 in German ("Falscher Parameter."); UNCONFIRMED for netsh.
        "param_incorrect": "Falscher Parameter.",
        "param_missing": (
            "Mindestens ein erforderlicher Parameter wurde nicht angegeben.\r\n"
            "Überprüfen Sie die erforderlichen Parameter, und geben Sie sie erneut ein."
        ),
        "cmd_not_found": "Der folgende Befehl wurde nicht gefunden: {cmd}.",
        # Win32 32 and 1168 in German (UNCONFIRMED for netsh).
        "in_use": "Der Prozess kann nicht auf die Datei zugreifen, da sie von einem anderen Prozess verwendet wird.",
        "not_found": "Element nicht gefunden.",
        # UNCONFIRMED: German reg.exe texts.
        "reg_ok": "Der Vorgang wurde erfolgreich beendet.",
        "reg_not_found": "FEHLER: Der angegebene Registrierungsschlüssel bzw. Wert wurde nicht gefunden.",
        "reg_invalid_syntax": 'FEHLER: Ungültige Syntax.\r\nGeben Sie "REG {verb} /?" ein, um die Syntax anzuzeigen.',
        "reg_invalid_key": 'FEHLER: Ungültiger Schlüsselname.\r\nGeben Sie "REG {verb} /?" ein, um die Syntax anzuzeigen.',
        "reg_overwrite": "Wert {name} ist vorhanden. Überschreiben (Ja/Nein)? ",
        "reg_delete_confirm": "Registrierungswert {name} löschen (Ja/Nein)? ",
        "reg_canceled": "Der Vorgang wurde vom Benutzer abgebrochen.",
        # UNCONFIRMED: German PowerShell 5.1 CommandNotFoundException message.
        "ps_not_recognized": (
            'Die Benennung "{name}" wurde nicht als Name eines Cmdlet, einer Funktion, einer Skriptdatei oder '
            "eines ausführbaren Programms erkannt. Überprüfen Sie die Schreibweise des Namens, oder ob der Pfad "
            "korrekt ist (sofern enthalten), und wiederholen Sie den Vorgang."
        ),
        "ps_missing_terminator": "Der Zeichenfolge fehlt das Abschlusszeichen: {quote}.",
        "cmd_not_recognized": (
            'Der Befehl "{name}" ist entweder falsch geschrieben oder\r\nkonnte nicht gefunden werden.'
        ),
    },
}


def text(language, key, **kwargs):
    return TEXTS[language][key].format(**kwargs)
